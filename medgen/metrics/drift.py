"""Drift between two feature sets: squared MMD with an RBF kernel (median-heuristic bandwidth) and a permutation
p-value. Use it on incoming real images (input drift) or on batches of generated images (output drift).
Written here: MONAI has no MMD two-sample test, and torchmetrics' only MMD is KID's polynomial one."""

from __future__ import annotations

import numpy as np
import torch

from medgen.metrics.errors import require

DRIFT_MIN = 5


def _mmd2_unbiased(k: torch.Tensor, x_idx: torch.Tensor, y_idx: torch.Tensor) -> torch.Tensor:
    kxx, kyy, kxy = k[x_idx][:, x_idx], k[y_idx][:, y_idx], k[x_idx][:, y_idx]
    n, m = len(x_idx), len(y_idx)
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def mmd_test(
    reference: np.ndarray, new: np.ndarray, permutations: int = 500, bandwidth: float | None = None, seed: int = 0
) -> dict:
    """Unbiased MMD^2 (RBF kernel) between ``reference`` and ``new`` features and its permutation p-value.

    The bandwidth defaults to the median pairwise distance of the pooled features. The p-value is
    ``(1 + #{permuted MMD^2 >= observed}) / (1 + permutations)``.
    """
    require("MMD drift test", DRIFT_MIN, min(len(reference), len(new)), "feature vectors per set")
    z = torch.from_numpy(np.concatenate([reference, new]).astype(np.float64))
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2[~torch.eye(len(z), dtype=torch.bool)]
        bandwidth = float(off.median().sqrt()) or 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n = len(reference)
    idx = torch.arange(len(z))
    observed = float(_mmd2_unbiased(k, idx[:n], idx[n:]))
    gen = torch.Generator().manual_seed(seed)
    exceed = 0
    for _ in range(permutations):
        p = torch.randperm(len(z), generator=gen)
        exceed += int(float(_mmd2_unbiased(k, p[:n], p[n:])) >= observed)
    return {
        "mmd2": observed,
        "p_value": (1 + exceed) / (1 + permutations),
        "bandwidth": bandwidth,
        "permutations": permutations,
        "n_reference": n,
        "n_new": len(new),
    }
