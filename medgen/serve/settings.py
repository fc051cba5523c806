"""Service settings: where state lives, which bundles are served, and the limits a request must respect."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("~/.medgen/serve")


def default_data_dir() -> Path:
    """``$MEDGEN_SERVE_DIR`` or ``~/.medgen/serve``."""
    return Path(os.environ.get("MEDGEN_SERVE_DIR") or DEFAULT_DATA_DIR).expanduser()


@dataclass
class BundleSpec:
    """A bundle to serve: its folder, its weights and any ``configs/inference.yaml`` overrides."""

    name: str
    path: Path
    ckpt: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        return self.ckpt or self.path / "models" / "model.pt"


@dataclass
class ServeSettings:
    """Everything ``create_app`` needs; plain values, no globals.

    Args:
        data_dir: holds ``serve.db`` (jobs, API key hashes) and ``results/<job_id>/``.
        bundles: the bundles served, by name.
        max_images: upper bound of ``num_images`` per job.
        max_steps: upper bound of ``steps`` per job.
        queue_size: jobs waiting at most; more are refused with 503.
        default_max_jobs: active (queued + running) jobs per key when the key sets no limit.
        max_body_bytes: largest request body; a larger one gets 413 before it is read (and before the key check).
        retention_days: results of finished jobs are deleted this many days after they finished (0: kept).
    """

    data_dir: Path = field(default_factory=default_data_dir)
    bundles: dict[str, BundleSpec] = field(default_factory=dict)
    max_images: int = 64
    max_steps: int = 1000
    queue_size: int = 16
    default_max_jobs: int = 4
    max_body_bytes: int = 64 * 1024
    retention_days: float = 30.0

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "serve.db"

    @property
    def results_dir(self) -> Path:
        return Path(self.data_dir) / "results"
