"""Quality gate for production sampling: a per-image realism score and a threshold fitted on real images.

The realism score is the distance from an image's features to its k-th nearest real feature (the k-NN radius used by
precision/recall). The threshold is the ``percentile``-th percentile of the scores of real held-out images (or, when
only one real set is given, of its leave-one-out scores), so about ``100 - percentile`` % of real images would fail.

A gate knows the channels of the images it was fitted on (``meta["channels"]``: 1 grey, the default of gates that
record none, or 3 RGB) and refuses images with other channels in one line (:meth:`QualityGate.check_channels`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from medgen.fileio import atomic_write
from medgen.metrics.distribution import knn_distance
from medgen.metrics.errors import require


class QualityGate:
    """``QualityGate(k, percentile).fit(real_feats)``, then ``.score(feats)`` and ``.passes(feats)``."""

    def __init__(self, k: int = 5, percentile: float = 95.0):
        self.k, self.percentile = k, percentile
        self.reference: np.ndarray | None = None
        self.threshold: float | None = None
        self.meta: dict = {}  # how the gate was fitted: features, size, domain classifier, datalist (fit-gate)

    def fit(self, real_feats: np.ndarray, heldout_feats: np.ndarray | None = None) -> QualityGate:
        """Keep ``real_feats`` as the manifold; fit the threshold on ``heldout_feats`` (else leave-one-out)."""
        require("quality gate", self.k + 2, len(real_feats), "real feature vectors")
        self.reference = np.asarray(real_feats, dtype=np.float32)
        if heldout_feats is None:
            scores = knn_distance(self.reference, self.reference, self.k, exclude_self=True)
        else:
            scores = knn_distance(np.asarray(heldout_feats, dtype=np.float32), self.reference, self.k)
        self.threshold = float(np.percentile(scores, self.percentile))
        return self

    @property
    def channels(self) -> int:
        """Channels of the images the gate was fitted on (1 grey, 3 RGB)."""
        return int(self.meta.get("channels", 1))

    def check_channels(self, channels: int, where: str = "quality gate") -> None:
        """Stop with one line when images of ``channels`` meet a gate fitted on the other kind."""
        if int(channels) != self.channels:
            kind = {1: "grey (1 channel)", 3: "colour (3 channels)"}
            raise ValueError(
                f"{where} was fitted on {kind.get(self.channels, self.channels)} images but these are "
                f"{kind.get(int(channels), channels)}: fit a gate on the images' own data with `medgen fit-gate "
                "DATALIST GATE` (it takes the channels of the datalist's images)")

    def _check(self) -> None:
        if self.reference is None or self.threshold is None:
            raise RuntimeError("QualityGate is not fitted: call fit(real_feats) or QualityGate.load(path) first.")

    def score(self, feats: np.ndarray) -> np.ndarray:
        """k-NN distance to the real feature manifold (lower = more realistic)."""
        self._check()
        return knn_distance(np.asarray(feats, dtype=np.float32), self.reference, self.k)

    def passes(self, feats: np.ndarray) -> np.ndarray:
        """Boolean mask: score at or below the fitted threshold."""
        return self.score(feats) <= self.threshold

    def save(self, path: str | os.PathLike) -> Path:
        """Write the gate (with :attr:`meta` as JSON) to ``path``."""
        self._check()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:  # np.savez adds .npz to a bare name; a file object keeps the name given
            np.savez(f, reference=self.reference, threshold=self.threshold, k=self.k, percentile=self.percentile,
                     meta=json.dumps(self.meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityGate:
        with np.load(path) as z:
            gate = cls(int(z["k"]), float(z["percentile"]))
            gate.reference, gate.threshold = z["reference"], float(z["threshold"])
            gate.meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return gate


def generate_until_pass(
    generate: Callable[[Sequence[int], Sequence[int]], torch.Tensor],
    labels: Sequence[int],
    gate: QualityGate,
    extractor: Callable[[np.ndarray], np.ndarray],
    first_seed: int = 0,
    max_rounds: int = 20,
    seed_step: int = 1,
) -> dict:
    """Generate until every requested label has an image that passes the gate (``medgen sample --quality-filter``).

    ``generate(labels, seeds)`` returns N x C x H x W in [-1, 1] (e.g. ``DiffusionPipeline.generate``), scored in
    their channels (grey or RGB; refused when the gate was fitted on the other kind); rejected slots are retried
    with fresh seeds. Seeds run ``first_seed``, ``first_seed + seed_step``, ... (a shard of n steps by n, so the
    shards' seeds never meet). Returns the kept images ([-1, 1]), their labels, seeds and scores, and the rejection
    rate over all generated images.
    """
    pending = list(range(len(labels)))
    kept: dict[int, tuple[torch.Tensor, int, float]] = {}
    next_seed, tried, rejected = first_seed, 0, 0
    for _ in range(max_rounds):
        if not pending:
            break
        seeds = list(range(next_seed, next_seed + len(pending) * seed_step, seed_step))
        next_seed += len(pending) * seed_step
        images = generate([labels[i] for i in pending], seeds)
        unit = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1).numpy()
        gate.check_channels(unit.shape[1])
        scores = gate.score(extractor(unit))
        ok = scores <= gate.threshold
        tried += len(pending)
        rejected += int((~ok).sum())
        still = []
        for slot, seed, img, s, good in zip(pending, seeds, images, scores, ok):
            if good:
                kept[slot] = (img, seed, float(s))
            else:
                still.append(slot)
        pending = still
    if pending:
        raise RuntimeError(
            f"quality filter: {len(pending)} of {len(labels)} images still fail after {max_rounds} "
            f"rounds (rejection rate {rejected / max(tried, 1):.1%}); check the model or the gate."
        )
    order = range(len(labels))
    return {
        "images": torch.stack([kept[i][0] for i in order]),
        "labels": list(labels),
        "seeds": [kept[i][1] for i in order],
        "scores": [kept[i][2] for i in order],
        "rejection_rate": rejected / max(tried, 1),
        "generated": tried,
        "threshold": gate.threshold,
    }
