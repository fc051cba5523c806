"""Periodic FID during training: an ignite handler that samples a small fixed set every N epochs, logs FID, puts it
in ``engine.state.metrics["fid"]`` and keeps the best checkpoint (model state_dict, written atomically) by it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medgen.engine.checkpoints import save_state_dict_atomic
from medgen.engine.curves import write_training_curves
from medgen.fileio import append_line
from medgen.metrics.distribution import fid
from medgen.metrics.features import FeatureExtractor
from medgen.metrics.image_sets import to_common_form
from medgen.networks.weights_meta import write_sidecar


class FIDHandler:
    """Compute FID of ``sample_fn(labels, seeds)`` (N x C x H x W in [-1, 1]) against ``real_images``.

    Args:
        sample_fn: generates the fixed evaluation set, e.g. ``lambda l, s: pipeline.generate(l, s, 25)``.
        real_images: real images, N x 1 x H x W float in [0, 1] or uint8 (RGB is averaged to grey).
        labels, seeds: the fixed class labels and seeds (same set every time, so FIDs are comparable).
        extractor: feature extractor (e.g. ``DomainFeatures`` for speed or ``InceptionFeatures``).
        model: the network whose ``state_dict`` is saved when FID improves; ``save_path`` where.
        interval: run every ``interval`` epochs.
        meta: the run's weights metadata, written beside the best weights (``best_model.json``) so they sample
            like any ``model.pt``.
        history_path: JSON lines ``{"epoch", "fid", "best", "features"}``, one per evaluation (the run folder's
            ``fid.jsonl``); ``training_curves.png`` beside it is redrawn with the FID panel.
    """

    def __init__(
        self,
        sample_fn: Callable[[Sequence[int], Sequence[int]], torch.Tensor],
        real_images,
        labels: Sequence[int],
        seeds: Sequence[int],
        extractor: FeatureExtractor,
        model: torch.nn.Module | None = None,
        save_path: str | os.PathLike | None = None,
        interval: int = 1,
        size: int | None = None,
        logger: logging.Logger | None = None,
        meta: object = None,
        history_path: str | os.PathLike | None = None,
    ):
        self.sample_fn, self.labels, self.seeds = sample_fn, list(labels), list(seeds)
        self.extractor, self.model, self.interval, self.size = extractor, model, interval, size
        self.save_path = Path(save_path) if save_path else None
        self.real = to_common_form(real_images, size)
        self._real_feats: np.ndarray | None = None
        self.best_fid, self.best_epoch, self.history = float("inf"), -1, []
        self.logger = logger or logging.getLogger("medgen.fid")
        self.meta = getattr(meta, "meta", meta)
        self.history_path = Path(history_path) if history_path else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> float:
        if self._real_feats is None:
            self._real_feats = self.extractor(self.real)
        was_training = self.model.training if self.model is not None else False
        if self.model is not None:
            self.model.eval()
        try:
            sample = self.sample_fn(self.labels, self.seeds).detach().float().cpu()
            fake = to_common_form(((sample + 1) / 2).clamp(0, 1), self.size or self.real.shape[-1])
        finally:
            if self.model is not None and was_training:
                self.model.train()
        value = fid(self._real_feats, self.extractor(fake))
        epoch = engine.state.epoch
        engine.state.metrics["fid"] = value
        self.history.append((epoch, value))
        self.logger.info(f"epoch {epoch}: FID {value:.3f} (best {min(value, self.best_fid):.3f})")
        if value < self.best_fid:
            self.best_fid, self.best_epoch = value, epoch
            if self.model is not None and self.save_path is not None:
                save_state_dict_atomic(self.model, self.save_path)
                if self.meta:
                    write_sidecar(self.save_path, {**self.meta, "selected_by": {"fid": value, "epoch": epoch,
                                                                              "features": self.extractor.name}})
        if self.history_path is not None:
            append_line(self.history_path, json.dumps({"epoch": epoch, "fid": value, "best": self.best_fid,
                                                       "features": self.extractor.name, "n": len(self.labels)}))
            write_training_curves(self.history_path.parent, fid_name=self.history_path.name)
        return value
