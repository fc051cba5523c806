"""Ignite handlers for diffusion training: EMA export, sample grids, loss history, progress."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from ignite.handlers import TimeLimit as IgniteTimeLimit

from medgen.data.image_io import save_class_grid
from medgen.engine.checkpoints import save_state_dict_atomic
from medgen.engine.curves import write_training_curves
from medgen.fileio import append_line, read_json_lines, remove_temp_files, write_text_atomic
from medgen.networks.weights_meta import sidecar_path, write_sidecar

logger = logging.getLogger(__name__)


def _loss_of(output) -> float:
    if isinstance(output, list):
        output = output[0]
    return float(output["loss"]) if isinstance(output, dict) else float(output)


class ModelExporter:
    """Write the (EMA) network's weights to ``path`` every ``interval`` epochs and when training completes.

    This is the run's ``model.pt``: a plain state dict that ``inference.yaml`` loads, with its metadata (``meta``,
    the run's :class:`~medgen.networks.weights_meta.WeightsMeta`: classes, image size, network, data fingerprint)
    in the sidecar ``model.json`` beside it. ``half=True`` stores it in fp16 (half the size; loading casts back to
    the network's dtype). ``export_path`` (the bundle's ``models/model.pt``, only when asked for) also receives the
    weights and their sidecar when training completes.
    """

    def __init__(self, network: torch.nn.Module, path: str | Path, interval: int = 1, half: bool = False,
                 meta: object = None, export_path: str | Path | None = None) -> None:
        self.network = network
        self.path = Path(path)
        self.interval = max(1, int(interval))
        self.half = half
        self.meta = getattr(meta, "meta", meta)
        self.export_path = Path(export_path) if export_path else None
        self._written_at: int | None = None  # iteration of the last write: COMPLETED after it has nothing new

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        if self.export_path is not None:
            engine.add_event_handler(Events.COMPLETED, self._export)

    def _write(self, path: Path) -> None:
        save_state_dict_atomic(self.network, path, dtype=torch.float16 if self.half else torch.float32)
        if self.meta:
            write_sidecar(path, self.meta)

    def __call__(self, engine: Engine) -> None:
        if self._written_at == engine.state.iteration and self.path.is_file():
            return
        self._write(self.path)
        self._written_at = engine.state.iteration
        logger.info("epoch %d: weights written to %s (metadata %s)", engine.state.epoch, self.path,
                    sidecar_path(self.path).name if self.meta else "none")

    def _export(self, engine: Engine) -> None:
        self._write(self.export_path)
        logger.info("epoch %d: weights exported to the bundle: %s", engine.state.epoch, self.export_path)


class TimeLimit:
    """Stop training cleanly after ``limit_sec`` seconds of training (ignite's ``TimeLimit``, clock started when the
    run starts rather than when the config is parsed). ``None`` or 0 disables it.

    ``max_iterations`` stops it the same way after that many iterations (a fixed training compute, e.g. for
    comparing recipes). The engine is terminated after the current iteration; ``COMPLETED`` still fires, so the
    final checkpoint and
    ``model.pt`` are written and a later run with ``resume: true`` continues from there (for batch slots with a
    wall-clock limit).
    """

    def __init__(self, limit_sec: float | None = None, max_iterations: int | None = None) -> None:
        if limit_sec is not None and limit_sec < 0:
            raise ValueError(f"time limit must be positive seconds or null, got {limit_sec}")
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"max_iterations must be a positive number of iterations or null, got {max_iterations}")
        self.limit_sec = int(limit_sec) if limit_sec else None
        self.max_iterations = max_iterations

    def attach(self, engine: Engine) -> None:
        if self.limit_sec:
            engine.add_event_handler(Events.STARTED, self._start)
        if self.max_iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)

    def _start(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, IgniteTimeLimit(self.limit_sec))

    def _count(self, engine: Engine) -> None:
        """``max_iterations`` (counted over the whole run, resumed parts included): a fixed training compute."""
        if engine.state.iteration >= self.max_iterations:
            logger.info("reached max_iterations %d: stopping", self.max_iterations)
            engine.terminate()


class LossHistory:
    """Record the mean training loss of each epoch in ``path`` (JSON lines) and on ``engine.state.metrics``, and
    redraw ``training_curves.png`` beside it.

    Each line is appended and fsynced. A run stopped by its time limit (or ``max_iterations``) ends without ignite's
    ``EPOCH_COMPLETED``: its last epoch gets a line too, marked ``"partial": true`` with the ``iterations`` it covers
    when the epoch was cut short. A resumed run carries that partial mean on and replaces the line with the whole
    epoch's when the epoch completes. When a run starts (after a resume), lines of epochs beyond the resumed one
    (trained by a run that was killed before its next checkpoint) and a line cut short by a kill are dropped, so
    the file holds one line per epoch of the weights. A non-finite loss stops training with one line before any
    checkpoint or ``model.pt`` is written from the diverged weights.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sum = 0.0
        self._n = 0
        self._carried = False  # the file holds a partial line of the epoch under way (a resumed run's)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        engine.add_event_handler(Events.TERMINATE, self._write_stopped)

    def _start(self, engine: Engine) -> None:
        self._sum, self._n, self._carried = 0.0, 0, False
        if not self.path.is_file():
            return
        epoch, iteration = engine.state.epoch, engine.state.iteration
        kept = []
        for r in read_json_lines(self.path):
            if not r.get("partial"):
                if int(r.get("epoch", 0)) <= epoch:
                    kept.append(r)
            elif int(r.get("epoch", 0)) == epoch + 1 and int(r.get("iteration", -1)) == iteration:
                kept.append(r)  # the epoch these weights stopped in: its mean so far goes on
                self._carried = True
                self._n = int(r.get("iterations", 0))
                self._sum = float(r["loss"]) * self._n
        self._rewrite(kept)

    def _rewrite(self, records: list[dict]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        if lines != self.path.read_text(encoding="utf-8", errors="replace"):
            write_text_atomic(lines, self.path)

    def _accumulate(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "training stopped and no checkpoint or model.pt written from these weights; lower the learning rate "
                "or set --precision fp32, then rerun: it resumes from the last good checkpoint"
            )
        self._sum += loss
        self._n += 1

    def _write(self, engine: Engine, partial: bool = False) -> None:
        mean = self._sum / max(self._n, 1)
        record = {"epoch": engine.state.epoch, "iteration": engine.state.iteration, "loss": mean}
        if partial:
            record.update(iterations=self._n, partial=True)
        else:
            engine.state.metrics["train_loss_epoch"] = mean  # "train_loss" is the per-iteration value
        if self._carried:  # the partial line this run resumed gives way to this one
            self._rewrite([r for r in read_json_lines(self.path) if not r.get("partial")])
            self._carried = False
        append_line(self.path, json.dumps(record))
        self._sum, self._n = 0.0, 0
        write_training_curves(self.path.parent, loss_name=self.path.name)

    def _write_stopped(self, engine: Engine) -> None:
        """A stop by ``terminate()`` (time limit, ``max_iterations``): ignite fires no ``EPOCH_COMPLETED`` even on an
        epoch's last iteration, so the line is written here; partial unless the epoch was done."""
        if self._n:
            length = engine.state.epoch_length
            self._write(engine, partial=not (length and engine.state.iteration % length == 0))


class LossProgressBar:
    """A tqdm bar over the iterations of each epoch showing the running loss (ignite's ``ProgressBar``)."""

    def __init__(self, persist: bool = False) -> None:
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: {"loss": _loss_of(out)})


class EpochGridHandler:
    """Every ``interval`` epochs, and when training completes, write ``<out_dir>/grid_epoch_NNNN.png`` (a subclass's
    ``__call__``); temporary files a kill left in ``out_dir`` are removed when a run starts."""

    def __init__(self, out_dir: str | Path, interval: int = 5) -> None:
        self.out_dir = Path(out_dir)
        self.interval = max(1, int(interval))
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: remove_temp_files(self.out_dir))  # left by a kill
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        # also when the run that reached this epoch was stopped before its grid was written
        if engine.state.epoch % self.interval or not self._path(engine).is_file():
            self(engine)

    def _path(self, engine: Engine) -> Path:
        return self.out_dir / f"grid_epoch_{engine.state.epoch:04d}.png"

    def __call__(self, engine: Engine) -> None:
        raise NotImplementedError


class SampleGridHandler(EpochGridHandler):
    """Every ``interval`` epochs, sample ``per_class`` images per class and save a labelled grid PNG (RGB when the
    model makes 3 channels, grey for 1: :func:`medgen.data.image_io.save_class_grid`).

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
        super().__init__(out_dir, interval)
        self.pipeline_fn = pipeline_fn
        self.classes = list(classes)
        self.per_class = per_class
        self.steps = num_inference_steps
        self.seed = seed
        self.guidance_scale = guidance_scale

    def __call__(self, engine: Engine) -> None:
        pipeline = self.pipeline_fn()
        seeds = list(range(self.seed, self.seed + self.per_class))
        rows = {}
        for label, name in enumerate(self.classes):
            rows[name] = list(pipeline.generate([label] * len(seeds), seeds, self.steps, self.guidance_scale))
        self.last_path = save_class_grid(rows, self._path(engine))
        logger.info("epoch %d: sample grid %s", engine.state.epoch, self.last_path)
