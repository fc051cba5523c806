"""Helpers for multi-process (DDP) training from a bundle config: process group, per-rank device and handlers,
and a check that the replicas' weights stay identical.

Used by ``bundles/<b>/configs/multi_gpu_train.yaml``, launched with ``torchrun --nproc_per_node N``; ``nccl`` on GPUs,
``gloo`` on CPUs. All helpers also work in a single process without a process group (rank 0 of 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.handlers import LrScheduleHandler

from medgen.engine.checkpoints import ResumeFromLatest
from medgen.fileio import append_line

logger = logging.getLogger(__name__)

#: handlers every rank must run (restoring state, updating its EMA copy, stepping its optimizer's learning-rate
#: schedule, or the replicas would train with different rates); the rest run on rank 0 only
EVERY_RANK_HANDLERS: tuple[type, ...] = (ResumeFromLatest, EMAHandler, LrScheduleHandler)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when GPUs are present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_process_group(backend: str | None = None) -> str:
    """Join the ``torchrun`` process group (idempotent): ``nccl`` with GPUs, ``gloo`` without. Returns the backend."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError(
                "multi_gpu_train.yaml must be launched by torchrun (RANK is not set), e.g. "
                "torchrun --nproc_per_node 2 -m monai.bundle run training --config_file "
                "\"['configs/train.yaml','configs/multi_gpu_train.yaml']\""
            )
        if backend == "nccl":
            torch.cuda.set_device(local_device())
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    return backend


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def handlers_for_rank(handlers: Sequence[object], every_rank: tuple[type, ...] = EVERY_RANK_HANDLERS) -> list:
    """All handlers on rank 0; on other ranks only those of the ``every_rank`` types (plus :class:`ReplicaSyncCheck`),
    so checkpoints, logs, loss files and sample grids are written once."""
    if rank() == 0:
        return list(handlers)
    keep = (*every_rank, ReplicaSyncCheck)
    return [h for h in handlers if isinstance(h, keep)]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, bit for bit."""
    module = getattr(module, "module", module)  # DDP / DataParallel
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class ReplicaSyncCheck:
    """Every ``interval`` epochs, compare the weight digests of all ranks; raise if any replica drifted.

    DDP keeps replicas identical by averaging gradients; a rank that diverged (a handler that changed weights on one
    rank, a non-deterministic op before the all-reduce) would silently train a different model. Rank 0 appends
    ``{"epoch", "world_size", "digests", "in_sync"}`` to ``path`` when given.
    """

    def __init__(self, network: torch.nn.Module, interval: int = 1, path: str | Path | None = None) -> None:
        self.network = network
        self.interval = max(1, int(interval))
        self.path = Path(path) if path else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        mine = weights_digest(self.network)
        digests = [mine]
        if world_size() > 1:
            digests = [""] * world_size()
            dist.all_gather_object(digests, mine)
        in_sync = len(set(digests)) == 1
        if rank() == 0 and self.path is not None:
            record = {"epoch": engine.state.epoch, "world_size": len(digests), "digests": digests, "in_sync": in_sync}
            append_line(self.path, json.dumps(record))
        if not in_sync:
            raise RuntimeError(
                f"epoch {engine.state.epoch}: the DDP replicas' weights differ across ranks "
                f"({digests}); stop and check handlers that change weights on one rank"
            )
        logger.info("epoch %d: weights identical on all %d ranks", engine.state.epoch, len(digests))
