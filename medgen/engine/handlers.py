"""Ignite handlers for diffusion training: EMA export, sample grids, loss history, progress."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from ignite.handlers import TimeLimit as IgniteTimeLimit

from medgen.data.image_io import save_class_grid
from medgen.engine.checkpoints import save_state_dict_atomic

logger = logging.getLogger(__name__)


def _loss_of(output) -> float:
    if isinstance(output, list):
        output = output[0]
    return float(output["loss"]) if isinstance(output, dict) else float(output)


class ModelExporter:
    """Write the (EMA) network's weights to ``path`` every ``interval`` epochs and when training completes.

    This is the bundle's ``models/model.pt``: a plain state dict that ``inference.yaml`` loads. ``half=True``
    stores it in fp16 (half the size; loading casts back to the network's dtype).
    """

    def __init__(self, network: torch.nn.Module, path: str | Path, interval: int = 1, half: bool = False) -> None:
        self.network = network
        self.path = Path(path)
        self.interval = max(1, int(interval))
        self.half = half

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        save_state_dict_atomic(self.network, self.path, dtype=torch.float16 if self.half else torch.float32)
        logger.info("epoch %d: weights written to %s", engine.state.epoch, self.path)


class TimeLimit:
    """Stop training cleanly after ``limit_sec`` seconds of training (ignite's ``TimeLimit``, clock started when the
    run starts rather than when the config is parsed). ``None`` or 0 disables it.

    The engine is terminated after the current iteration; ``COMPLETED`` still fires, so the final checkpoint and
    ``model.pt`` are written and a later run with ``resume: true`` continues from there (for batch slots with a
    wall-clock limit).
    """

    def __init__(self, limit_sec: float | None = None) -> None:
        if limit_sec is not None and limit_sec < 0:
            raise ValueError(f"time limit must be positive seconds or null, got {limit_sec}")
        self.limit_sec = int(limit_sec) if limit_sec else None

    def attach(self, engine: Engine) -> None:
        if self.limit_sec:
            engine.add_event_handler(Events.STARTED, self._start)

    def _start(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, IgniteTimeLimit(self.limit_sec))


class LossHistory:
    """Record the mean training loss of each epoch in ``path`` (JSON lines) and on ``engine.state.metrics``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sum = 0.0
        self._n = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _accumulate(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at iteration {engine.state.iteration}; "
                "lower the learning rate or turn off fp16"
            )
        self._sum += loss
        self._n += 1

    def _write(self, engine: Engine) -> None:
        mean = self._sum / max(self._n, 1)
        engine.state.metrics["train_loss"] = mean
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": engine.state.epoch, "iteration": engine.state.iteration, "loss": mean}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._sum, self._n = 0.0, 0


class LossProgressBar:
    """A tqdm bar over the iterations of each epoch showing the running loss (ignite's ``ProgressBar``)."""

    def __init__(self, persist: bool = False) -> None:
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: {"loss": _loss_of(out)})


class SampleGridHandler:
    """Every ``interval`` epochs, sample ``per_class`` images per class and save a labelled grid PNG.

    Args:
        pipeline_fn: builds a ``DiffusionPipeline`` over the current (EMA) network.
        classes: class names.
        out_dir: where ``grid_epoch_NNNN.png`` go.
        per_class: images per class in the grid.
        num_inference_steps: DDIM steps for the preview (few: it is a preview).
        seed: seeds are ``seed .. seed + per_class - 1`` for every class, so grids compare across epochs.
    """

    def __init__(
        self,
        pipeline_fn: Callable[[], object],
        classes: Sequence[str],
        out_dir: str | Path,
        interval: int = 5,
        per_class: int = 4,
        num_inference_steps: int = 25,
        seed: int = 0,
        guidance_scale: float = 1.0,
    ) -> None:
        self.pipeline_fn = pipeline_fn
        self.classes = list(classes)
        self.out_dir = Path(out_dir)
        self.interval = max(1, int(interval))
        self.per_class = per_class
        self.steps = num_inference_steps
        self.seed = seed
        self.guidance_scale = guidance_scale
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        pipeline = self.pipeline_fn()
        seeds = list(range(self.seed, self.seed + self.per_class))
        rows = {}
        for label, name in enumerate(self.classes):
            rows[name] = list(pipeline.generate([label] * len(seeds), seeds, self.steps, self.guidance_scale))
        self.last_path = save_class_grid(rows, self.out_dir / f"grid_epoch_{engine.state.epoch:04d}.png")
        logger.info("epoch %d: sample grid %s", engine.state.epoch, self.last_path)
