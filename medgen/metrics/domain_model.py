"""Train (once, cached) the small domain classifier whose penultimate features are the fast domain features."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from medgen.metrics.classifier import save_classifier, train_classifier
from medgen.metrics.features import cache_dir
from medgen.metrics.image_sets import ImageSet, load_datalist_split


def train_domain_classifier(
    train: ImageSet, out: str | os.PathLike, epochs: int = 3, seed: int = 0, log: bool = False
) -> Path:
    """Train the classifier on a real training set and save it to ``out``."""
    t0 = time.time()
    model = train_classifier(train.images, train.labels, len(train.classes), epochs=epochs, seed=seed, log=log)
    if log:
        print(f"domain classifier: {len(train)} images, {epochs} epochs, {time.time() - t0:.0f}s")
    return save_classifier(model, out, train.classes, train.size)


def ensure_domain_classifier(
    datalist: str | os.PathLike,
    size: int = 64,
    split: str = "training",
    epochs: int = 3,
    max_per_class: int | None = 1500,
    log: bool = False,
    channels: int | None = None,
) -> Path:
    """The cached domain classifier for ``datalist`` (trained on its ``split`` the first time), taking ``channels``
    (1 grey, 3 RGB; None: the images' own, see :func:`medgen.metrics.image_sets.settle_channels`)."""
    train = load_datalist_split(datalist, split, size=size, per_class=max_per_class, channels=channels)
    key = hashlib.sha256(f"{train.fingerprint}|{epochs}".encode()).hexdigest()[:16]
    path = cache_dir() / "domain" / f"classifier_{key}.pt"
    if not path.is_file():
        train_domain_classifier(train, path, epochs=epochs, log=log)
    return path
