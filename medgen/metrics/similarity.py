"""The real-vs-synthetic MSE / SSIM table: mean pixel MSE and SSIM (MONAI ``SSIMMetric``) over random pairs drawn
from two image groups, e.g. real positives vs synthetic positives, real negatives vs synthetic positives and real
negatives vs real positives (the reference gap between classes)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import SSIMMetric

from medgen.metrics.errors import require


def pair_stats(a: np.ndarray, b: np.ndarray, num_pairs: int = 200, seed: int = 0) -> dict:
    """Mean and std of MSE and SSIM over ``num_pairs`` random pairs (one image from ``a``, one from ``b``).

    Images are in [0, 1]; ``mse_255`` is the same MSE on the 0-255 scale that papers on 8-bit images report."""
    require("MSE/SSIM table", 1, min(len(a), len(b)))
    rng = np.random.default_rng(seed)
    x, y = a[rng.integers(0, len(a), num_pairs)], b[rng.integers(0, len(b), num_pairs)]
    mse = ((x - y) ** 2).reshape(num_pairs, -1).mean(axis=1)
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=7)(torch.from_numpy(x), torch.from_numpy(y))
    ssim = ssim.reshape(-1).numpy()
    return {
        "mse": float(mse.mean()),
        "mse_std": float(mse.std()),
        "mse_255": float(mse.mean() * 255**2),
        "ssim": float(ssim.mean()),
        "ssim_std": float(ssim.std()),
        "pairs": num_pairs,
    }


def real_vs_synthetic_table(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    classes: list[str],
    positive: int | None = None,
    num_pairs: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{"a": ..., "b": ..., mse, ssim}``. ``positive`` defaults to the last class; the others are negatives."""
    pos = len(classes) - 1 if positive is None else positive
    groups = {
        "real positives": real[real_labels == pos],
        "real negatives": real[real_labels != pos],
        "synthetic positives": fake[fake_labels == pos],
        "synthetic negatives": fake[fake_labels != pos],
    }
    rows = []
    for a, b in [
        ("real positives", "synthetic positives"),
        ("real negatives", "synthetic positives"),
        ("real negatives", "real positives"),
        ("real negatives", "synthetic negatives"),
    ]:
        if len(groups[a]) and len(groups[b]):
            rows.append({"a": a, "b": b, **pair_stats(groups[a], groups[b], num_pairs, seed)})
    return rows
