"""Distribution metrics on feature sets: FID, KID, precision/recall/density/coverage.

FID is MONAI's :class:`~monai.metrics.FIDMetric` (with an exact sqrtm-free evaluation for 2048-d features); KID is
torchmetrics' unbiased polynomial-kernel MMD estimator (``poly_mmd``), re-expressed on precomputed kernel matrices
for speed over many subsets. PRDC (Naeem et al., ICML 2020, "Reliable Fidelity and Diversity Metrics for Generative
Models") is written here: neither MONAI nor torchmetrics provides it.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import FIDMetric

from medgen.metrics.errors import require

FID_MIN = 2
MONAI_FID_MAX_DIM = 256
KID_MIN = 2


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets.

    With more images than feature dimensions (<= ``MONAI_FID_MAX_DIM``) this is MONAI's ``FIDMetric``. Otherwise
    (Inception's 2048-d, or few images) MONAI's ``scipy.linalg.sqrtm`` is slow (minutes for 2048 x 2048 on a CPU)
    and unstable on the singular covariance product, so the same formula is evaluated
    with the exact identity ``tr sqrt(S1 S2) = sum of singular values of A1 A2^T / sqrt((n1-1)(n2-1))`` (A = centred
    features; when N <= d) or eigenvalues of ``S1^1/2 S2 S1^1/2`` (when N > d). With fewer samples than dimensions
    the covariances are rank-deficient and FID is biased upwards: compare figures only at equal N.
    """
    require("FID", FID_MIN, min(len(real), len(fake)), "images per set")
    if min(len(real), len(fake)) > np.shape(real)[1] and np.shape(real)[1] <= MONAI_FID_MAX_DIM:
        return float(FIDMetric()(_t(fake), _t(real)))
    return frechet_distance_exact(real, fake)


def frechet_distance_exact(real: np.ndarray, fake: np.ndarray) -> float:
    """FID via the trace identities above (no ``sqrtm``); equal to MONAI's value up to rounding."""
    a, b = _t(real), _t(fake)
    a_c, b_c = a - a.mean(0), b - b.mean(0)
    n1, n2, d = len(a), len(b), a.shape[1]
    s1, s2 = a_c.T @ a_c / (n1 - 1), b_c.T @ b_c / (n2 - 1)
    if min(n1, n2) <= d:
        tr_sqrt = torch.linalg.svdvals(a_c @ b_c.T).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    else:
        w, v = torch.linalg.eigh(s1)
        half = (v * w.clamp_min(0).sqrt()) @ v.T
        tr_sqrt = torch.linalg.eigvalsh(half @ s2 @ half).clamp_min(0).sqrt().sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_sqrt)


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance: mean and std over ``subsets`` random subsets (cubic polynomial kernel).

    Subsets hold ``min(subset_size, N // 2)`` images so that they differ; the estimate is unbiased at any size.

    Same estimator as torchmetrics' ``poly_mmd`` (unbiased MMD^2, k(x, y) = (x.y / d + 1)^3), but the three kernel
    matrices are computed once and indexed per subset, which is ~100x faster on CPU for many subsets.
    """
    n = min(len(real), len(fake))
    require("KID", KID_MIN, n, "images per set")
    m = min(subset_size, max(2, n // 2))  # subsets of the whole set would all be equal (std 0)
    r, f = _t(real), _t(fake)
    d = r.shape[1]
    k_rr, k_ff, k_rf = (r @ r.T / d + 1) ** 3, (f @ f.T / d + 1) ** 3, (r @ f.T / d + 1) ** 3
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        i, j = torch.randperm(len(r), generator=gen)[:m], torch.randperm(len(f), generator=gen)[:m]
        kxx, kyy, kxy = k_rr[i][:, i], k_ff[j][:, j], k_rf[i][:, j]
        mmd = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subset_size": m, "subsets": subsets}


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the point itself is at distance 0


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall, density and coverage with k-NN balls (Naeem et al. 2020). Identical sets give all 1.0."""
    require("precision/recall/density/coverage", k + 1, min(len(real), len(fake)), f"images per set (k={k})")
    r, f = _t(real), _t(fake)
    r_rad, f_rad = _kth_nn_radius(r, k), _kth_nn_radius(f, k)
    d_rf = torch.cdist(r, f)  # real x fake
    in_real = d_rf <= r_rad[:, None]
    precision = in_real.any(dim=0).double().mean()
    recall = (d_rf <= f_rad[None, :]).any(dim=1).double().mean()
    density = in_real.double().sum(dim=0).mean() / k
    coverage = (d_rf.min(dim=1).values <= r_rad).double().mean()
    return {
        "precision": float(precision),
        "recall": float(recall),
        "density": float(density),
        "coverage": float(coverage),
        "k": k,
    }


def knn_distance(queries: np.ndarray, reference: np.ndarray, k: int = 5, exclude_self: bool = False) -> np.ndarray:
    """Distance from each query to its k-th nearest reference feature (``exclude_self`` when queries is reference)."""
    require("k-NN distance", k + int(exclude_self), len(reference), "reference features")
    d = torch.cdist(_t(queries), _t(reference))
    return d.kthvalue(k + int(exclude_self), dim=1).values.numpy()
