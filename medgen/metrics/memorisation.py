"""Memorisation (privacy) audit: is a generated image a near copy of a training image, even a transformed one?

Three measures per generated image, each against the training set:

* **aligned** (the one that finds transformed copies): 1 - the best normalised cross-correlation (NCC) between the
  generated image and a training image after searching *augmented versions of the training image*, so a copy that
  was flipped (horizontally or vertically), cropped and resized back (80-95%, centred or not), shifted, rotated by up
  to ~10 degrees or changed in brightness, contrast or gamma is still at distance ~0 (NCC ignores brightness and
  contrast and nearly ignores gamma). Two stages: a coarse search of every training image over a grid of
  augmentations (flips and rotations of the generated image; crops, rescales and shifts of the training image) on
  blurred 16 px thumbnails, then, for the ``candidates`` best training images, a gradient refinement of a
  similarity transform (scale, rotation, shift, with the flip found) at 32 px; the distance is taken at up to 64 px.
  Comparing with augmented images rather than augmentation-invariant features was chosen by measurement on real
  chest X-rays: the coarse stage alone (an invariant thumbnail: the best match over the grid) caught 55% of rotated
  and 62% of off-centre-cropped copies at 8% false positives; with the refinement every transformation is caught
  at >= 95% with about 1-2% of held-out real images flagged (``tests/metrics/test_audit_transformed_copies.py``).
  The grid and the refinement warp with torch's ``affine_grid``/``grid_sample`` (batched and differentiable: the
  spatial transformer MONAI's ``AffineTransform`` wraps) and blur with MONAI's ``GaussianSmooth``.
* **pixel**: root-mean-square pixel distance (reported, and an exact copy is always flagged).

RGB images are compared in colour: pixel distances over all three channels, and the NCC of the aligned measure
standardises each channel on its own (a colour cast or a stain shift of a copy does not hide it, as brightness does
not for grey) before correlating the three together, so structure must match in every channel.
* **feature** (when features are given): cosine distance of e.g. the domain classifier's features.

The same distances from real held-out images to the training set are the reference: a generated image closer to the
training set than the ``percentile``-th percentile (default 1st) of the held-out distances, by the aligned or the
feature measure, is flagged; exact copies (pixel distance 0) always are.

Cost on a CPU (one thread, 64 px; larger images are compared at 64 px): 500 generated and 100 held-out images
against 5000 training images take about 45 CPU-seconds (half of it the coarse search, which grows with generated x
training images) and about 1 GB of memory.

Every artefact of the audit that names training files or shows their pixels is patient data (PHI): see
:data:`PHI_NOTE` and ``--redact-paths``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medgen.data.image_io import atomic_save
from medgen.metrics.errors import require

HELDOUT_MIN = 10  # a 1st percentile from fewer than 100 held-out images is close to their minimum; 10 is the floor
# 1 - NCC after alignment below which two images are copies whatever the held-out images say: 8-bit, noisy (sd 0.03),
# JPEG-40 and gamma-changed copies measured <= 0.035, different patients >= 0.03 (chest X-ray and brain MRI). Held-out
# images below it are duplicates of training images across the splits and are left out of the reference.
COPY_DISTANCE = 0.02
PHI_NOTE = (
    "PHI: this audit compares generated images with real patients' training images. Without --redact-paths, "
    "audit.json names the training files (their paths may hold names or record numbers) and closest_pairs.png "
    "shows real training pixels: store and share them as patient data. With --redact-paths, training files are "
    "named by their place in the datalist ('training[17]') and closest_pairs.png is not written."
)
EVALUATE_PHI_NOTE = (
    "PHI: this evaluation compares generated images with real patients' training images. Without --redact-paths "
    "(bundle key redact_paths), report.html shows real training pixels (the real rows and the closest pairs) and "
    "metrics.json names the training files: store and share both as patient data. With it, training files are named "
    "by their place in the datalist ('training[17]') and the report shows no real pixels."
)


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


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, h, w) -> unit-norm vectors, each channel zero-mean: their dot product is the normalised
    cross-correlation (for RGB, of the three channels together after removing each channel's mean)."""
    v = x.flatten(2)
    return F.normalize((v - v.mean(2, keepdim=True)).flatten(1), dim=1)


def _rotation(degrees: float) -> torch.Tensor:
    t = np.deg2rad(degrees)
    return torch.tensor([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], dtype=torch.float32)


_FLIPS = {"none": torch.eye(2), "horizontal": torch.diag(torch.tensor([-1.0, 1.0])),
          "vertical": torch.diag(torch.tensor([1.0, -1.0]))}


def _warp(x: torch.Tensor, theta: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``out(p) = x(theta @ [p, 1])`` in normalised coordinates (zeros outside), ``size`` x ``size`` output;
    ``theta`` is one 2 x 3 matrix for all images or one per image (N x 2 x 3)."""
    h = size or x.shape[-1]
    if theta.dim() == 2:  # one grid for the whole batch
        grid = F.affine_grid(theta[None], [1, 1, h, h], align_corners=False).expand(len(x), -1, -1, -1)
    else:
        grid = F.affine_grid(theta, [len(x), 1, h, h], align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


@dataclass
class AlignedSearch:
    """Nearest reference image of each query under flips, crops/rescales, shifts, rotations and intensity changes.

    Knobs: the coarse grid (``angles`` for the query; ``scales`` x ``positions`` crops and ``shift`` translations of
    the reference), ``candidates`` refined per query, ``steps``/``lr`` of the refinement, and the sizes (pixels)
    of the coarse thumbnails, of the refinement and of the final comparison. ``__call__`` returns the nearest
    reference index, the distance 1 - NCC after alignment and the transform found (one dict per query).
    """

    coarse_size: int = 16
    refine_size: int = 32
    final_size: int = 64
    candidates: int = 5
    steps: int = 40
    lr: float = 0.01
    angles: Sequence[float] = (0.0, -6.0, 6.0)
    scales: Sequence[float] = (0.95, 0.9, 0.85, 0.8)
    positions: int = 3
    shift: float = 0.1
    blur: float = 1.5
    refine_blur: float = 1.0
    query_chunk: int = 64
    reference_chunk: int = 1024
    pair_chunk: int = 512

    def query_views(self) -> list[tuple[str, float]]:
        return [(f, a) for f in _FLIPS for a in self.angles]

    def reference_views(self) -> list[tuple[float, float, float]]:
        """(scale, centre x, centre y): the whole image, shifted copies, then crops on a positions x positions grid."""
        d = self.shift
        views = [(1.0, 0.0, 0.0)]
        views += [(1.0, dx * d, dy * d) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if d and (dx or dy)]
        for s in self.scales:
            for cy in np.linspace(-(1 - s), 1 - s, self.positions):
                views += [(s, float(cx), float(cy)) for cx in np.linspace(-(1 - s), 1 - s, self.positions)]
        return views

    def _blur(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            return x
        from monai.transforms import GaussianSmooth

        flat = x.reshape(-1, *x.shape[-2:])  # every channel of every image blurred alike
        out = torch.as_tensor(GaussianSmooth(sigma * x.shape[-1] / 64)(flat)).as_tensor().float()
        return out.reshape(x.shape)

    def _coarse(self, x: torch.Tensor, thetas: list[torch.Tensor]) -> torch.Tensor:
        """(N, views, coarse_size**2) standardised thumbnails of ``x`` warped by each theta."""
        x = self._blur(x, self.blur)
        size = min(2 * self.coarse_size, x.shape[-1])  # sampled at twice the thumbnail size (blurred), then averaged
        out = [_standardise(F.interpolate(_warp(x, t, size), size=self.coarse_size, mode="area")) for t in thetas]
        return torch.stack(out, 1)

    def _initial_theta(self, qv: tuple[str, float], rv: tuple[float, float, float]) -> torch.Tensor:
        """Query pixel p matches reference pixel ``s R(-a) F p + c`` when view ``qv`` of the query matches ``rv``."""
        (flip, angle), (s, cx, cy) = qv, rv
        a = s * _rotation(-angle) @ _FLIPS[flip]
        return torch.cat([a, torch.tensor([[cx], [cy]])], 1)

    def _candidates(self, q: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query: the ``candidates`` best reference indices and the index of the best (query, reference) view."""
        qv, rv = self.query_views(), self.reference_views()
        q_thetas = [torch.cat([_FLIPS[f] @ _rotation(a), torch.zeros(2, 1)], 1) for f, a in qv]
        r_thetas = [torch.tensor([[s, 0, cx], [0, s, cy]], dtype=torch.float32) for s, cx, cy in rv]
        qf = self._coarse(q, q_thetas)  # Nq, Vq, D
        best = torch.empty(len(q), len(r))
        for j in range(0, len(r), self.reference_chunk):
            rf = self._coarse(r[j : j + self.reference_chunk], r_thetas)  # Nr, Vr, D
            flat = rf.reshape(-1, rf.shape[-1])
            for i in range(0, len(q), self.query_chunk):
                qi = qf[i : i + self.query_chunk]
                s = (qi.reshape(-1, qi.shape[-1]) @ flat.T).reshape(len(qi), len(qv), len(rf), len(rv))
                best[i : i + len(qi), j : j + len(rf)] = s.amax(dim=(1, 3))
        top = best.topk(min(self.candidates, len(r)), dim=1).indices
        # which (query view, reference view) pair won, for the chosen candidates only
        rf = self._coarse(r[top.flatten()], r_thetas).reshape(len(q), top.shape[1], len(rv), -1)
        s = torch.einsum("qad,qkbd->qkab", qf, rf).flatten(2)
        return top, s.argmax(2)

    def _refine(self, q: torch.Tensor, r: torch.Tensor, theta0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ascent of the NCC over scale, rotation and shift (the flip fixed); returns (NCC, theta)."""
        a0 = theta0[:, :, :2]
        det = torch.det(a0)
        flip = torch.where(det < 0, -1.0, 1.0)  # a reflection about the vertical axis (a vertical flip = it + 180°)
        scale = det.abs().sqrt()
        rot = a0 / scale[:, None, None] * torch.stack([flip, torch.ones_like(flip)], 1)[:, None, :]
        angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
        params = torch.stack([scale.log(), angle, theta0[:, 0, 2], theta0[:, 1, 2]], 1)

        def theta(p: torch.Tensor) -> torch.Tensor:
            c, s, e = p[:, 1].cos(), p[:, 1].sin(), p[:, 0].exp()
            a = torch.stack([torch.stack([c * flip, -s], 1), torch.stack([s * flip, c], 1)], 1) * e[:, None, None]
            return torch.cat([a, p[:, 2:, None]], 2)

        size = min(self.refine_size, q.shape[-1])
        qs = _standardise(F.interpolate(self._blur(q, self.refine_blur), size=size, mode="area"))
        rs = F.interpolate(self._blur(r, self.refine_blur), size=size, mode="area")
        # Adam written out (torch.optim's first import alone costs seconds; this is its update rule)
        m, v = torch.zeros_like(params), torch.zeros_like(params)
        b1, b2 = 0.9, 0.999
        for step in range(1, self.steps + 1):
            with torch.enable_grad():
                p = params.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(-(_standardise(_warp(rs, theta(p))) * qs).sum(), p)
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            params = params - self.lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + 1e-8)
        with torch.no_grad():
            th = theta(params)
            size = min(self.final_size, q.shape[-1])
            warped = F.interpolate(_warp(r, th, r.shape[-1]), size=size, mode="area")
            ncc = (_standardise(warped) * _standardise(F.interpolate(q, size=size, mode="area"))).sum(1)
        return ncc, th

    @staticmethod
    def describe(theta: torch.Tensor) -> dict:
        """The transform that maps the training image onto the generated one, in words a reader can check."""
        a = theta[:, :2].double()
        det = float(torch.det(a))
        scale = abs(det) ** 0.5
        rot = (a / scale) @ torch.diag(torch.tensor([-1.0 if det < 0 else 1.0, 1.0], dtype=torch.float64))
        angle = float(np.degrees(np.arctan2(float(rot[1, 0]), float(rot[0, 0]))))
        flip = "none"
        if det < 0:  # a vertical flip is a horizontal one turned by 180 degrees
            flip = "horizontal" if abs(angle) <= 90 else "vertical"
            angle = angle if flip == "horizontal" else angle - float(np.sign(angle)) * 180
        return {"flip": flip, "crop_scale": round(scale, 3), "rotation_deg": round(-angle, 1),
                "centre_shift": [round(float(theta[0, 2]), 3), round(float(theta[1, 2]), 3)]}

    def __call__(self, queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        r = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
        if q.shape[-1] > self.final_size:  # everything at <= final_size pixels: the cost does not grow with size
            q = F.interpolate(q, size=self.final_size, mode="area")
            r = F.interpolate(r, size=self.final_size, mode="area")
        with torch.no_grad():
            top, view = self._candidates(q, r)
        qv, rv = self.query_views(), self.reference_views()
        k = top.shape[1]
        theta0 = torch.stack([self._initial_theta(qv[int(v) // len(rv)], rv[int(v) % len(rv)])
                              for v in view.flatten()]).float()
        q_of_pair, r_of_pair = torch.arange(len(q)).repeat_interleave(k), top.flatten()
        ncc, thetas = [], []
        for i in range(0, len(theta0), self.pair_chunk):
            n, t = self._refine(q[q_of_pair[i : i + self.pair_chunk]], r[r_of_pair[i : i + self.pair_chunk]],
                                theta0[i : i + self.pair_chunk])
            ncc.append(n)
            thetas.append(t)
        ncc_all = torch.cat(ncc).reshape(len(q), k)
        theta_all = torch.cat(thetas).reshape(len(q), k, 2, 3)
        best, j = ncc_all.max(1)
        idx = top.gather(1, j[:, None])[:, 0]
        chosen = theta_all[torch.arange(len(q)), j]
        return idx.numpy(), (1.0 - best).clamp_min(0).double().numpy(), [self.describe(t) for t in chosen]


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
    nn_aligned: np.ndarray | None = None
    dist_aligned: np.ndarray | None = None
    heldout_aligned: np.ndarray | None = None
    threshold_aligned: float | None = None
    transforms: list[dict] = field(default_factory=list)

    @property
    def nearest(self) -> np.ndarray:
        """Nearest training image of each generated image: by the aligned measure when computed, else by pixels."""
        return self.nn_pixel if self.nn_aligned is None else self.nn_aligned

    @property
    def closeness(self) -> np.ndarray:
        """Distance to that training image (lower = closer)."""
        return self.dist_pixel if self.dist_aligned is None else self.dist_aligned

    def summary(self, generated_ids: list[str] | None = None, train_ids: list[str] | None = None) -> dict:
        """JSON-ready summary: thresholds, counts, distance quantiles and the flagged images.

        ``train_ids`` name the training images in ``train_file``; pass ids that are not paths (``training[17]``) to
        keep source paths out of the summary.
        """

        def q(x: np.ndarray | None) -> dict | None:
            return None if x is None else {p: float(np.percentile(x, int(p[1:]))) for p in ("p1", "p5", "p50")}

        flagged = []
        for i in np.flatnonzero(self.flagged):
            row = {"index": int(i), "pixel_l2": float(self.dist_pixel[i]), "nn_train_pixel": int(self.nn_pixel[i])}
            if self.dist_aligned is not None:
                row.update(aligned=float(self.dist_aligned[i]), nn_train_aligned=int(self.nn_aligned[i]))
                if self.transforms:
                    row["transform"] = self.transforms[i]
            if self.dist_feature is not None:
                row.update(feature_cos=float(self.dist_feature[i]), nn_train_feature=int(self.nn_feature[i]))
            if generated_ids:
                row["file"] = generated_ids[i]
            if train_ids:
                row["train_file"] = train_ids[int(self.nearest[i])]
            flagged.append(row)
        return {
            "percentile": self.percentile,
            "method": "aligned: nearest training image under searched flips, crops/rescales, shifts, rotations "
                      "(1 - NCC, so brightness/contrast/gamma do not matter); feature: cosine; pixel: RMS",
            "threshold_aligned": self.threshold_aligned,
            "threshold_pixel_l2": self.threshold_pixel,
            "threshold_feature_cos": self.threshold_feature,
            "n_generated": int(len(self.flagged)),
            "n_flagged": int(self.flagged.sum()),
            "generated_aligned": q(self.dist_aligned),
            "heldout_aligned": q(self.heldout_aligned),
            "generated_pixel_l2": q(self.dist_pixel),
            "heldout_pixel_l2": q(self.heldout_pixel),
            "generated_feature_cos": q(self.dist_feature),
            "heldout_feature_cos": q(self.heldout_feature),
            "flagged": flagged,
            **self.extra,
            "phi_note": PHI_NOTE,
        }


def memorisation_audit(
    generated: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    generated_feats: np.ndarray | None = None,
    train_feats: np.ndarray | None = None,
    heldout_feats: np.ndarray | None = None,
    percentile: float = 1.0,
    search: AlignedSearch | None = None,
    aligned: bool = True,
    copy_distance: float = COPY_DISTANCE,
) -> AuditResult:
    """Audit N x C x H x W ``generated`` images (C = 1 grey or 3 RGB, as ``train`` and ``heldout``) against
    ``train``, with ``heldout`` real images as the reference.

    Flags by the aligned measure (``search``, default :class:`AlignedSearch`; ``aligned=False`` skips it) and the
    feature measure (when the three feature arrays are given); exact pixel copies are always flagged. The aligned
    threshold is the ``percentile`` of the held-out distances that are not themselves copies (below
    ``copy_distance``: duplicates across the splits, counted in ``extra["heldout_near_copies"]``), and never below
    ``copy_distance``.
    """
    require("memorisation audit", 1, len(generated), "generated images")
    require("memorisation audit", 1, len(train), "training images")
    require("memorisation audit", HELDOUT_MIN, len(heldout), "held-out images (reference distances)")
    shapes = {"generated": generated.shape[1:], "training": train.shape[1:], "held-out": heldout.shape[1:]}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"memorisation audit: images must share channels and size, got {shapes} (C x H x W): load "
                         "all three sets with the same size and channels")
    nn_px, d_px = nearest_pixel_l2(generated, train)
    _, h_px = nearest_pixel_l2(heldout, train)
    thr_px = float(np.percentile(h_px, percentile))
    flagged = d_px <= 1e-6
    if not aligned:
        flagged = flagged | (d_px < thr_px)
    nn_f = d_f = h_f = thr_f = None
    if generated_feats is not None and train_feats is not None and heldout_feats is not None:
        nn_f, d_f = nearest_cosine(generated_feats, train_feats)
        _, h_f = nearest_cosine(heldout_feats, train_feats)
        thr_f = float(np.percentile(h_f, percentile))
        flagged |= (d_f < thr_f) | (d_f <= 1e-9)
    result = AuditResult(nn_px, d_px, nn_f, d_f, h_px, h_f, thr_px, thr_f, flagged, percentile)
    if aligned:
        search = search or AlignedSearch()
        result.nn_aligned, result.dist_aligned, result.transforms = search(generated, train)
        _, result.heldout_aligned, _ = search(heldout, train)
        leaked = result.heldout_aligned < copy_distance
        result.extra["heldout_near_copies"] = int(leaked.sum())
        rest = result.heldout_aligned[~leaked]
        result.threshold_aligned = max(copy_distance, float(np.percentile(rest, percentile)) if len(rest) else 0.0)
        result.flagged = flagged | (result.dist_aligned < result.threshold_aligned)
    return result


def closest_pairs_canvas(
    generated: np.ndarray, train: np.ndarray, result: AuditResult, n: int = 8, gap: int = 4
) -> np.ndarray:
    """Rows of (generated | nearest training image) for the ``n`` generated images closest to the training set
    (aligned measure when computed, else pixel L2), in [0, 1]: H x W for grey images, H x W x 3 for RGB. The right
    half is real patient pixels."""
    order = np.argsort(result.closeness, kind="stable")[:n]
    c, (h, w) = generated.shape[1], generated.shape[-2:]
    canvas = np.ones((c, len(order) * (h + gap) - gap, 2 * w + gap), dtype=np.float32)
    for r, i in enumerate(order):
        y = r * (h + gap)
        canvas[:, y : y + h, :w] = generated[i]
        canvas[:, y : y + h, w + gap :] = train[result.nearest[i]]
    return canvas[0] if c == 1 else np.moveaxis(canvas, 0, -1)


def closest_pairs_png(
    generated: np.ndarray, train: np.ndarray, result: AuditResult, path: str | Path, n: int = 8
) -> Path:
    """Side-by-side PNG (grey or RGB, as the images) of the ``n`` generated images closest to the training set:
    generated | training (PHI)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = closest_pairs_canvas(generated, train, result, n)
    return atomic_save(Image.fromarray(np.round(canvas * 255).astype(np.uint8)), path)


def redacted_ids(train_ids: Sequence[str], datalist: dict, root: str | None = None,
                 split: str = "training") -> list[str]:
    """``split[i]`` (the item's place in the datalist) for each loaded training image id, instead of its path.

    Ids are as :func:`medgen.metrics.image_sets.load_items` makes them (the path, relative ones joined to ``root``,
    plus ``:address`` for an image inside a file); an id not in the datalist becomes ``split-image-k``.
    """
    import os

    from medgen.metrics.image_sets import _address

    place: dict[str, int] = {}
    for i, item in enumerate(datalist.get(split, [])):
        path = str(item.get("image"))
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        extra = _address(item)
        place.setdefault(f"{path}:{extra}" if extra else path, i)
    return [f"{split}[{place[t]}]" if t in place else f"{split}-image-{k}" for k, t in enumerate(train_ids)]
