"""Find and resume from checkpoints written by MONAI's ``CheckpointSaver`` (``*_epoch=N.pt``)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"(?:epoch|iteration)=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest training checkpoint in ``ckpt_dir`` (``*epoch=N.pt``, ``*iteration=N.pt`` or the final one written
    when a run ends or is stopped by its time limit), or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.glob("*.pt"):
        m = _EPOCH.search(p.name)
        if m or "final" in p.stem:
            found.append((p.stat().st_mtime_ns, int(m.group(1)) if m else -1, p))
    return max(found)[2] if found else None


class ResumeFromLatest:
    """On ``STARTED``, restore network, EMA, optimizer and trainer state from the newest checkpoint, if any.

    Wraps MONAI's ``CheckpointLoader``; with no checkpoint the run starts fresh. Set ``enabled=False`` (the
    bundle key ``resume``) to always start fresh. The engine it is attached to is restored under
    ``engine_key`` (a config cannot name the trainer inside the trainer's own handler list).
    """

    def __init__(self, ckpt_dir: str | Path, load_dict: Mapping[str, Any], enabled: bool = True,
                 map_location: str | None = "cpu", engine_key: str | None = "trainer") -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.engine_key = engine_key
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir) if self.enabled else None
        if path is None:
            logger.info("no checkpoint in %s: training from scratch", self.ckpt_dir)
            return
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location)(engine)
        self.resumed_from = path
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)


def save_state_dict_atomic(module: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """``torch.save(module.state_dict())`` (floats as ``dtype``) through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().to(dtype).cpu() if v.is_floating_point() else v.cpu()
             for k, v in module.state_dict().items()}
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (atomic writes, ``n_saved`` rotation) that also saves the engine it is attached
    to under ``engine_key``, so epoch and iteration resume with the weights, optimizer and EMA."""

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str | None = "trainer", **kwargs: Any) -> None:
        self._engine_key = engine_key
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)

    def attach(self, engine: Engine) -> None:
        if self._engine_key:
            # ignite's Checkpoint keeps a reference to this dict: adding the engine here makes it part of each save
            self.save_dict[self._engine_key] = engine
        super().attach(engine)
