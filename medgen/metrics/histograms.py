"""Pixel-intensity histograms of two image sets (per channel for RGB) with a chi-square homogeneity test and KL
divergence (scipy)."""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency, entropy

from medgen.metrics.errors import require


def intensity_histogram(images: np.ndarray, bins: int = 64) -> np.ndarray:
    """Counts of pixel values in [0, 1] over ``bins`` equal bins."""
    return np.histogram(images.ravel(), bins=bins, range=(0.0, 1.0))[0].astype(np.float64)


CHANNEL_NAMES = ("R", "G", "B")


def _compare(h_real: np.ndarray, h_fake: np.ndarray) -> dict:
    keep = (h_real + h_fake) > 0
    stat, p, dof, _ = chi2_contingency(np.stack([h_real[keep], h_fake[keep]]))
    eps = 1e-10
    kl = entropy(h_real + eps, h_fake + eps)
    return {
        "chi2": float(stat),
        "chi2_per_pixel": float(stat / (h_real.sum() + h_fake.sum())),
        "p_value": float(p),
        "dof": int(dof),
        "kl_real_fake": float(kl),
        "hist_real": (h_real / h_real.sum()).tolist(),
        "hist_fake": (h_fake / h_fake.sum()).tolist(),
    }


def histogram_tests(real: np.ndarray, fake: np.ndarray, bins: int = 64) -> dict:
    """Chi-square test that both sets draw pixels from one distribution, and KL(real || fake) in nats.

    The chi-square p-value counts every pixel as an observation, so on large sets it is near 0 for any visible
    difference; read the statistic per pixel (``chi2_per_pixel``) and KL as effect sizes. For RGB sets (N x 3 x H x
    W) the top-level figures pool all channel values and ``per_channel`` holds the same test for R, G and B.
    """
    require("histogram tests", 1, min(len(real), len(fake)))
    out = {**_compare(intensity_histogram(real, bins), intensity_histogram(fake, bins)), "bins": bins}
    if real.ndim == 4 and real.shape[1] == 3 and fake.ndim == 4 and fake.shape[1] == 3:
        out["per_channel"] = {
            name: _compare(intensity_histogram(real[:, c], bins), intensity_histogram(fake[:, c], bins))
            for c, name in enumerate(CHANNEL_NAMES)
        }
    return out
