"""Memorisation (privacy) audit: is a generated image a near copy of a training image?

For each generated image: its nearest training image by pixel L2 and by feature cosine distance. The same distances
from real held-out images to the training set give the reference: a generated image closer to the training set than
the ``percentile``-th percentile (default 1st) of held-out-to-train distances, in either measure, is flagged; exact
copies (distance 0) are always flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medgen.metrics.errors import require

HELDOUT_MIN = 10  # a 1st percentile from fewer than 100 held-out images is close to their minimum; 10 is the floor


def nearest_pixel_l2(queries: np.ndarray, reference: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Index and root-mean-square pixel distance of each query's nearest reference image."""
    ref = torch.from_numpy(reference.reshape(len(reference), -1)).double()
    idx, dist = [], []
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[i : i + chunk].reshape(-1, ref.shape[1])).double()
        d = torch.cdist(q, ref)
        v, j = d.min(dim=1)
        idx.append(j)
        dist.append(v / np.sqrt(ref.shape[1]))
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()


def nearest_cosine(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine distance (1 - cos) of each query's nearest reference feature."""
    q = torch.nn.functional.normalize(torch.from_numpy(queries).double(), dim=1)
    r = torch.nn.functional.normalize(torch.from_numpy(reference).double(), dim=1)
    v, j = (q @ r.T).max(dim=1)
    return j.numpy(), (1.0 - v).clamp_min(0).numpy()


@dataclass
class AuditResult:
    """Per-generated-image nearest neighbours and flags, plus the held-out reference distances and thresholds."""

    nn_pixel: np.ndarray
    dist_pixel: np.ndarray
    nn_feature: np.ndarray | None
    dist_feature: np.ndarray | None
    heldout_pixel: np.ndarray
    heldout_feature: np.ndarray | None
    threshold_pixel: float
    threshold_feature: float | None
    flagged: np.ndarray
    percentile: float
    extra: dict = field(default_factory=dict)

    def summary(self, generated_ids: list[str] | None = None, train_ids: list[str] | None = None) -> dict:
        """JSON-ready summary: thresholds, counts, distance quantiles and the flagged images."""

        def q(x: np.ndarray | None) -> dict | None:
            return None if x is None else {p: float(np.percentile(x, int(p[1:]))) for p in ("p1", "p5", "p50")}

        flagged = []
        for i in np.flatnonzero(self.flagged):
            row = {"index": int(i), "pixel_l2": float(self.dist_pixel[i]), "nn_train_pixel": int(self.nn_pixel[i])}
            if self.dist_feature is not None:
                row.update(feature_cos=float(self.dist_feature[i]), nn_train_feature=int(self.nn_feature[i]))
            if generated_ids:
                row["file"] = generated_ids[i]
            if train_ids:
                row["train_file"] = train_ids[int(self.nn_pixel[i])]
            flagged.append(row)
        return {
            "percentile": self.percentile,
            "threshold_pixel_l2": self.threshold_pixel,
            "threshold_feature_cos": self.threshold_feature,
            "n_generated": int(len(self.flagged)),
            "n_flagged": int(self.flagged.sum()),
            "generated_pixel_l2": q(self.dist_pixel),
            "heldout_pixel_l2": q(self.heldout_pixel),
            "generated_feature_cos": q(self.dist_feature),
            "heldout_feature_cos": q(self.heldout_feature),
            "flagged": flagged,
        }


def memorisation_audit(
    generated: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    generated_feats: np.ndarray | None = None,
    train_feats: np.ndarray | None = None,
    heldout_feats: np.ndarray | None = None,
    percentile: float = 1.0,
) -> AuditResult:
    """Audit N x 1 x H x W ``generated`` images against ``train``, with ``heldout`` real images as the reference."""
    require("memorisation audit", 1, len(generated), "generated images")
    require("memorisation audit", 1, len(train), "training images")
    require("memorisation audit", HELDOUT_MIN, len(heldout), "held-out images (reference distances)")
    nn_px, d_px = nearest_pixel_l2(generated, train)
    _, h_px = nearest_pixel_l2(heldout, train)
    thr_px = float(np.percentile(h_px, percentile))
    flagged = (d_px < thr_px) | (d_px <= 1e-6)
    nn_f = d_f = h_f = thr_f = None
    if generated_feats is not None and train_feats is not None and heldout_feats is not None:
        nn_f, d_f = nearest_cosine(generated_feats, train_feats)
        _, h_f = nearest_cosine(heldout_feats, train_feats)
        thr_f = float(np.percentile(h_f, percentile))
        flagged |= (d_f < thr_f) | (d_f <= 1e-9)
    return AuditResult(nn_px, d_px, nn_f, d_f, h_px, h_f, thr_px, thr_f, flagged, percentile)


def closest_pairs_canvas(
    generated: np.ndarray, train: np.ndarray, result: AuditResult, n: int = 8, gap: int = 4
) -> np.ndarray:
    """Rows of (generated | nearest training image) for the ``n`` generated images closest by pixel L2, in [0, 1]."""
    order = np.argsort(result.dist_pixel)[:n]
    h, w = generated.shape[-2:]
    canvas = np.ones((len(order) * (h + gap) - gap, 2 * w + gap), dtype=np.float32)
    for r, i in enumerate(order):
        y = r * (h + gap)
        canvas[y : y + h, :w] = generated[i, 0]
        canvas[y : y + h, w + gap :] = train[result.nn_pixel[i], 0]
    return canvas


def closest_pairs_png(
    generated: np.ndarray, train: np.ndarray, result: AuditResult, path: str | Path, n: int = 8
) -> Path:
    """Side-by-side PNG of the ``n`` generated images closest to the training set: generated | training."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = closest_pairs_canvas(generated, train, result, n)
    Image.fromarray(np.round(canvas * 255).astype(np.uint8)).save(path)
    return path
