"""MS-SSIM diversity: mean MS-SSIM over random pairs of generated images of one class (lower = more diverse).

Uses MONAI :class:`~monai.metrics.MultiScaleSSIMMetric`. Its size check asks for ``H // (len(weights) - 1) ** 2 >
kernel_size - 1``, so the standard 5 scales with an 11-pixel kernel need images larger than 160 pixels. Below that
we use 3 scales (the first three standard weights, renormalised) with a 7-pixel Gaussian kernel (sigma 1.5), which fits
from 32 x 32 up (64 x 64 -> scales 64, 32, 16).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

from medgen.metrics.errors import ImageSetError, require

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SMALL_WEIGHTS = tuple(w / sum(STANDARD_WEIGHTS[:3]) for w in STANDARD_WEIGHTS[:3])


def ms_ssim_config(size: int) -> dict:
    """Kernel size and scale weights that MONAI accepts for ``size`` x ``size`` images."""
    if size // 16 > 10:
        return {"kernel_size": 11, "weights": STANDARD_WEIGHTS}
    if size // 4 > 6:
        return {"kernel_size": 7, "weights": SMALL_WEIGHTS}
    raise ImageSetError(f"MS-SSIM needs images of at least 28 x 28 pixels, got {size} x {size}.")


def ms_ssim_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of N x C x H x W images in [0, 1] (RGB: MONAI averages the channels)."""
    cfg = ms_ssim_config(a.shape[-1])
    metric = MultiScaleSSIMMetric(
        spatial_dims=2, data_range=1.0, kernel_size=cfg["kernel_size"], weights=cfg["weights"]
    )
    return metric(torch.from_numpy(a), torch.from_numpy(b)).reshape(-1).numpy()


def ms_ssim_diversity(images: np.ndarray, num_pairs: int = 200, seed: int = 0) -> dict:
    """Mean and std of MS-SSIM over ``num_pairs`` random distinct pairs (target for generated sets: mean < 0.5)."""
    require("MS-SSIM diversity", 2, len(images))
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(images), size=num_pairs)
    j = (i + rng.integers(1, len(images), size=num_pairs)) % len(images)  # j != i
    values = ms_ssim_pairs(images[i], images[j])
    cfg = ms_ssim_config(images.shape[-1])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "pairs": int(num_pairs),
        "kernel_size": cfg["kernel_size"],
        "scales": len(cfg["weights"]),
    }
