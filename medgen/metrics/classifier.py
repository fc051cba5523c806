"""A small image classifier (MONAI ResNet-18 layout, few channels, 64 x 64 input, grey or RGB).

Used twice: as the fast domain feature extractor (its penultimate 128-d features) and for the downstream utility
experiment (real-only vs real + synthetic). Training is a short plain loop with MONAI random transforms for the
standard augmentation (flip, rotation <= 10 degrees, brightness/contrast) and class-weighted cross-entropy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import ResNet
from monai.transforms import Compose, RandAdjustContrast, RandFlip, RandRotate, RandScaleIntensity

from medgen.metrics.errors import require

CHANNELS = (16, 32, 64, 128)


def build_classifier(num_classes: int = 2, in_channels: int = 1, channels: Sequence[int] = CHANNELS) -> ResNet:
    """MONAI ResNet-18 layout (basic blocks 2-2-2-2) with ``channels`` planes; 2-D, ``in_channels`` 1 or 3 (RGB)."""
    return ResNet(
        block="basic",
        layers=[2, 2, 2, 2],
        block_inplanes=list(channels),
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=3,
        conv1_t_stride=1,
        num_classes=num_classes,
    )


def standard_augmentation(seed: int = 0) -> Compose:
    """Flip, rotation <= 10 degrees, brightness (intensity scale) and contrast (gamma), channel-first arrays."""
    aug = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=1),
            RandRotate(range_x=math.radians(10), prob=0.5, padding_mode="border"),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ]
    )
    aug.set_random_state(seed)
    return aug


def augment_batch(images: np.ndarray, aug: Compose) -> np.ndarray:
    """Apply ``aug`` image by image (N x 1 x H x W in [0, 1]) and clip back to [0, 1]."""
    out = np.stack([np.asarray(aug(torch.from_numpy(img))) for img in images]).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 2e-3,
    augment: bool = True,
    seed: int = 0,
    log: bool = False,
    max_steps: int | None = None,
    init: torch.nn.Module | None = None,
) -> ResNet:
    """Train :func:`build_classifier` on N x 1 x H x W images in [0, 1] with class-weighted cross-entropy.

    ``max_steps`` stops after that many optimizer steps (the one-cycle schedule spans them), so classifiers trained
    on sets of different sizes can get the same compute. ``init``: start from a copy of this classifier's weights
    (fine-tuning; ``init`` itself is left as it is)."""
    require("classifier training", 2 * num_classes, len(images))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_classifier(num_classes, in_channels=int(images.shape[1]))
    if init is not None:
        model.load_state_dict(init.state_dict())
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    weights = torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1.0)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / batch_size)
    steps = min(steps, max_steps) if max_steps else steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    aug = standard_augmentation(seed) if augment else None
    model.train()
    done = 0
    for epoch in range(epochs):
        t0, total = time.time(), 0.0
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch_size):
            if done >= steps:
                break
            done += 1
            idx = order[start : start + batch_size]
            x = augment_batch(images[idx], aug) if aug is not None else images[idx]
            x = torch.from_numpy(x) * 2.0 - 1.0
            y = torch.from_numpy(labels[idx].astype(np.int64))
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            print(f"  epoch {epoch + 1}/{epochs} loss {total / len(images):.4f} ({time.time() - t0:.1f}s)")
    return model.eval()


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities (N x K) for N x 1 x H x W images in [0, 1]."""
    model.eval()
    out = [
        torch.softmax(model(torch.from_numpy(images[i : i + batch_size]) * 2.0 - 1.0), dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def penultimate_features(model: ResNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The pooled features before the classifier's last linear layer (N x channels[-1])."""
    model.eval()
    fc, model.fc = model.fc, torch.nn.Identity()
    try:
        out = [
            model(torch.from_numpy(images[i : i + batch_size]) * 2.0 - 1.0) for i in range(0, len(images), batch_size)
        ]
    finally:
        model.fc = fc
    return torch.cat(out).numpy().astype(np.float32)


def save_classifier(
    model: ResNet, path: str | os.PathLike, classes: Sequence[str], size: int, extra: dict | None = None
) -> Path:
    """Save the state_dict with what is needed to rebuild it (atomic write); ``extra``: more keys to record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({**(extra or {}), "state_dict": model.state_dict(), "classes": list(classes), "size": size}, tmp)
    os.replace(tmp, path)
    return path


def load_classifier(path: str | os.PathLike) -> tuple[ResNet, list[str], int]:
    """Load a classifier saved by :func:`save_classifier`: (model, classes, input size); a missing, truncated or
    foreign file raises :class:`~medgen.networks.weights_meta.WeightsFileError` naming it."""
    from medgen.diffusion.sample_run import check_weights_file

    ckpt = torch.load(check_weights_file(path), map_location="cpu", weights_only=True)
    in_channels = int(ckpt["state_dict"]["conv1.weight"].shape[1])  # 1 grey, 3 RGB
    model = build_classifier(len(ckpt["classes"]), in_channels=in_channels)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), list(ckpt["classes"]), int(ckpt["size"])
