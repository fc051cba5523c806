"""Error analysis: per-image realism ranking, k-means clustering for mode collapse, radially averaged power spectra.

k-means is scipy's ``kmeans2``; the radial spectrum average is written here (numpy FFT) as neither MONAI nor scipy
offers it.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

from medgen.metrics.distribution import knn_distance
from medgen.metrics.errors import require


def realism_ranking(fake_feats: np.ndarray, real_feats: np.ndarray, k: int = 5, n: int = 8) -> dict:
    """Indices of the ``n`` most realistic (smallest k-NN distance to real features) and least realistic images."""
    d = knn_distance(fake_feats, real_feats, k)
    order = np.argsort(d)
    return {"scores": d, "most": order[:n].tolist(), "least": order[::-1][:n].tolist()}


def mode_collapse(fake_feats: np.ndarray, real_feats: np.ndarray, clusters: int = 10, seed: int = 0) -> dict:
    """Cluster real features with k-means, assign generated ones to the nearest centre and compare occupancy.

    Mode collapse shows as empty real clusters (``empty_clusters``), a low normalised entropy of the generated
    assignment (1 = spread evenly like a uniform over clusters) and a large total-variation distance to the real one.
    """
    require("mode-collapse clustering", clusters, len(real_feats), "real feature vectors (one per cluster)")
    mu, sd = real_feats.mean(0), real_feats.std(0) + 1e-8
    r, f = (real_feats - mu) / sd, (fake_feats - mu) / sd
    rng = np.random.default_rng(seed)
    centres, real_assign = kmeans2(r.astype(np.float64), clusters, minit="++", seed=rng)
    fake_assign = np.argmin(((f[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    p_real = np.bincount(real_assign, minlength=clusters) / len(r)
    p_fake = np.bincount(fake_assign, minlength=clusters) / max(len(f), 1)
    nz = p_fake[p_fake > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(clusters))
    return {
        "clusters": clusters,
        "real_share": p_real.tolist(),
        "generated_share": p_fake.tolist(),
        "empty_clusters": int(((p_fake == 0) & (p_real > 0)).sum()),
        "generated_entropy": entropy,
        "total_variation": float(0.5 * np.abs(p_real - p_fake).sum()),
        "largest_share": float(p_fake.max()),
    }


def radial_power_spectrum(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean radially averaged power spectrum of N x C x H x W images (RGB: the mean over channels too):
    (frequency in cycles/pixel, power)."""
    x = images.reshape(-1, *images.shape[-2:]).astype(np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(1, 2))) ** 2).mean(0)
    h, w = power.shape
    yy, xx = np.indices((h, w))
    r = np.hypot(yy - h // 2, xx - w // 2).round().astype(int)
    nbins = min(h, w) // 2
    radial = np.bincount(r.ravel(), power.ravel())[:nbins] / np.bincount(r.ravel())[:nbins]
    return np.arange(nbins) / min(h, w), radial


def spectrum_comparison(real: np.ndarray, fake: np.ndarray) -> dict:
    """Radial spectra of both sets and the mean absolute difference of their log10 power (0 = identical)."""
    freq, p_real = radial_power_spectrum(real)
    _, p_fake = radial_power_spectrum(fake)
    lr, lf = np.log10(p_real[1:] + 1e-12), np.log10(p_fake[1:] + 1e-12)
    high = slice(len(lr) // 2, None)
    return {
        "frequency": freq.tolist(),
        "real": p_real.tolist(),
        "generated": p_fake.tolist(),
        "log_spectral_distance": float(np.abs(lr - lf).mean()),
        "high_freq_log_ratio": float((lf[high] - lr[high]).mean()),
    }
