"""Reference points scored by the same metrics as a model: real images + Gaussian noise (sigma in [-1, 1] units),
standard augmentation of real images, and (in :mod:`medgen.metrics.evaluate`) real held-out vs real training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medgen.metrics.classifier import augment_batch, standard_augmentation
from medgen.metrics.image_sets import ImageSet, write_samples_dir


def noise_baseline(real: ImageSet, sigma: float = 0.3, seed: int = 0) -> np.ndarray:
    """Real images plus N(0, sigma^2) noise in [-1, 1] units, clipped, back in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = real.images * 2.0 - 1.0 + rng.normal(0.0, sigma, real.images.shape).astype(np.float32)
    return ((np.clip(x, -1.0, 1.0) + 1.0) / 2.0).astype(np.float32)


def augmentation_baseline(real: ImageSet, seed: int = 0) -> np.ndarray:
    """Real images through the standard augmentation (flip, rotation <= 10 degrees, brightness/contrast)."""
    return augment_batch(real.images, standard_augmentation(seed))


def write_baseline(real: ImageSet, kind: str, folder: str | os.PathLike, seed: int = 0, sigma: float = 0.3) -> Path:
    """Write a baseline (``"noise"`` or ``"augment"``) of ``real`` as a samples folder."""
    if kind == "noise":
        images = noise_baseline(real, sigma, seed)
    elif kind == "augment":
        images = augmentation_baseline(real, seed)
    else:
        raise ValueError(f"unknown baseline {kind!r}; choose 'noise' or 'augment'.")
    return write_samples_dir(folder, images, real.labels, real.classes, extra={"sampler": f"baseline:{kind}"})
