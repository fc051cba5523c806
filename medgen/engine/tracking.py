"""Experiment tracking glue for the training configs: MONAI's ``TensorBoardStatsHandler`` and ``MLFlowHandler`` do
the logging; this module holds what they lack.

- :func:`loss_and_lr`: the loss and the learning rate as the stats handlers' ``output_transform``.
- :func:`summary_writer`: one TensorBoard writer per run folder (and none on ranks other than 0), shared by the
  stats handler and the sample-grid handler, so a run has one event file.
- :class:`TensorBoardGrids`: the sample grid PNGs the run already writes (``grids/grid_epoch_NNNN.png``), logged as
  images at their epoch (MONAI's ``TensorBoardImageHandler`` shows batches and network outputs, not these grids).
- :class:`FreshEpochMetrics`: ignite keeps ``engine.state.metrics`` across epochs, so an FID computed every N epochs
  would be logged again, stale, at every epoch between; this clears them when an epoch starts.
- :func:`mlflow_uri`: a plain path to an SQLite file becomes the ``sqlite:///`` URI MLflow needs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medgen.engine.distributed import rank

logger = logging.getLogger(__name__)

_WRITERS: dict[str, object] = {}
#: off: YAML's null, and the text ``monai.bundle run --key null`` passes (its command line reads ``None`` as None)
OFF = (None, "", "null", "None", "none", "~")
_GRID = re.compile(r"grid_epoch_(\d+)\.png$")


def summary_writer(log_dir: str | os.PathLike | None):
    """The TensorBoard ``SummaryWriter`` of ``log_dir`` (one per folder and process), or ``None`` when ``log_dir`` is
    null (:data:`OFF`) or this is not rank 0 of a multi-process run (only rank 0 logs)."""
    if log_dir in OFF or rank() != 0:
        return None
    key = str(Path(log_dir).resolve())
    if key not in _WRITERS:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch imports tensorboard lazily
            raise SystemExit("medgen: error: config key 'tensorboard_dir' needs the tensorboard package: "
                             "pip install tensorboard (or --tensorboard_dir null to log nothing)") from err
        _WRITERS[key] = SummaryWriter(log_dir=key)
    return _WRITERS[key]


def mlflow_uri(value: str | os.PathLike | None) -> str | None:
    """``value`` as an MLflow tracking URI: URIs (``sqlite:///...``, ``http://...``) as given, a path to a local SQLite
    file (created if missing) as its ``sqlite:///`` URI; ``None`` (MLflow off) for ``None`` and on every rank but 0
    of a multi-process run (only rank 0 logs)."""
    if value in OFF or rank() != 0:
        return None
    text = str(value)
    if "://" in text:
        return text
    from monai.utils import path_to_sqlite_uri

    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(path))


def loss_and_lr(optimizer: torch.optim.Optimizer) -> Callable[[object], dict[str, float]]:
    """An ``output_transform`` for MONAI's stats handlers: the iteration's loss and the learning rate it ends with
    (``train_loss``, ``lr``; the first parameter group's)."""
    from monai.handlers import from_engine

    loss = from_engine(["loss"], first=True)

    def transform(output) -> dict[str, float]:
        value = loss(output)  # a dict output (the autoencoder's trainer) gives a 1-tuple
        value = value[0] if isinstance(value, (tuple, list)) else value
        return {"train_loss": float(value), "lr": float(optimizer.param_groups[0]["lr"])}

    return transform


class TensorBoardGrids:
    """Log every sample grid PNG in ``grid_dir`` not logged yet as a TensorBoard image (tag ``tag``, step = its epoch).

    Attach it after the grid handler: it runs when an epoch completes and when training completes, as that handler
    does, so each grid appears once, at the epoch it shows.
    """

    def __init__(self, grid_dir: str | os.PathLike, summary_writer, tag: str = "samples") -> None:
        self.grid_dir = Path(grid_dir)
        self.writer = summary_writer
        self.tag = tag
        self.logged: set[int] = set()

    def attach(self, engine: Engine) -> None:
        if self.writer is None:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        # a resumed run (the checkpoint is loaded when the run starts): its earlier grids are in earlier event files
        self.logged.update(e for e in self._grids() if e <= engine.state.epoch)

    def _grids(self) -> dict[int, Path]:
        found = {}
        for path in sorted(self.grid_dir.glob("grid_epoch_*.png")):
            m = _GRID.search(path.name)
            if m:
                found[int(m.group(1))] = path
        return found

    def __call__(self, engine: Engine) -> None:
        from PIL import Image

        for epoch, path in sorted(self._grids().items()):
            if epoch in self.logged or epoch > engine.state.epoch:
                continue  # logged already, or left by a later epoch of a killed run this one resumes
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
            self.writer.add_image(self.tag, pixels, global_step=epoch, dataformats="HWC")
            self.logged.add(epoch)
        self.writer.flush()


class FreshEpochMetrics:
    """Empty ``engine.state.metrics`` when an epoch starts, so the epoch loggers (TensorBoard, MLflow, the console)
    see only what this epoch computed: an FID of epoch 5 is not logged again at epochs 6..9."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.metrics.clear()
