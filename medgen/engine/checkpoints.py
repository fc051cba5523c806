"""Write, find and resume from training checkpoints (``*_epoch=N.pt``, ``checkpoint_final.pt``), crash-safely.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), deletes the old checkpoint before writing the new
one, and saves a "final" checkpoint when training fails; ``CheckpointSaver`` here writes through a temporary file
with fsync and rename, deletes rotated files only after the next save succeeded, refuses non-finite weights and
writes the final checkpoint only when training completes. ``latest_checkpoint`` picks by training progress and
skips damaged files.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from medgen.fileio import DiskFullError, atomic_write, fsync_dir, remove_temp_files, torch_save_atomic

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"(?:epoch|iteration)=(\d+)\.pt$")
_checked: dict[tuple[str, int, int], tuple[tuple[int, int, bool], str | None]] = {}
_warned: set[tuple[str, int, int]] = set()


def _first_rank() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def inspect_checkpoint(path: str | Path) -> tuple[tuple[int, int, bool], str | None]:
    """``((epoch, iteration, is_final), problem)`` of a checkpoint; ``problem`` is None when it loads.

    The trainer state is read with ``torch.load(weights_only=True, mmap=True)`` (the pickle only; tensors are
    mapped, not read) and every stored record is checked against its CRC-32 (``zipfile.testzip``), so a truncated,
    partly overwritten or foreign file is found without loading tens of MB into memory. Results are cached per
    (path, size, mtime).
    """
    path = Path(path)
    key = _file_key(path)
    if key in _checked:
        return _checked[key]
    m = _EPOCH.search(path.name)
    final = "final" in path.stem
    epoch = int(m.group(1)) if m and "epoch=" in path.name else -1
    iteration = int(m.group(1)) if m and "iteration=" in path.name and not final else -1
    problem = None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            problem = f"record {bad} fails its CRC check"
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            trainer = state.get("trainer") if isinstance(state, Mapping) else None
            if isinstance(trainer, Mapping) and "iteration" in trainer:
                iteration = int(trainer["iteration"])
                epoch = iteration // max(int(trainer.get("epoch_length") or 1), 1)
            elif not isinstance(state, Mapping):
                problem = "it is not a checkpoint dictionary"
    except zipfile.BadZipFile as err:
        problem = f"truncated or not a PyTorch checkpoint: {err}"
    except Exception as err:  # noqa: BLE001 - any failure to read means: not resumable
        problem = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    result = ((epoch, iteration, final), problem)
    _checked[key] = result
    return result


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint of the most training progress in ``ckpt_dir`` that loads, or None.

    Candidates are ``*epoch=N.pt``, ``*iteration=N.pt`` and the final checkpoint written when a run completes or is
    stopped by its time limit; they are ranked by the epoch and iteration recorded in them (not file times; on a
    tie the final one). A damaged or partial file is skipped with a one-line warning and the next one taken.
    Temporary files that a killed write left behind are removed.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    if _first_rank():
        for tmp in remove_temp_files(ckpt_dir):
            logger.info("removed %s, left by an interrupted checkpoint write", tmp)
    found = []
    for p in ckpt_dir.glob("*.pt"):
        if not (_EPOCH.search(p.name) or "final" in p.stem) or not p.is_file():
            continue
        try:
            progress, problem = inspect_checkpoint(p)
        except FileNotFoundError:
            continue
        found.append((progress, problem, p))
    good = [(progress, p) for progress, problem, p in found if problem is None]
    chosen = max(good)[1] if good else None
    instead = f"resuming from {chosen.name} instead" if chosen else "no usable checkpoint left"
    for _, problem, p in found:
        key = _file_key(p)
        if problem is not None and key not in _warned:
            _warned.add(key)
            logger.warning("skipping damaged checkpoint %s (%s); %s", p, problem, instead)
    return chosen


class ResumeFromLatest:
    """On ``STARTED``, restore network, EMA, optimizer and trainer state from the newest checkpoint, if any.

    Wraps MONAI's ``CheckpointLoader``; with no checkpoint the run starts fresh. Set ``enabled=False`` (the
    bundle key ``resume``) to always start fresh: earlier checkpoints in ``ckpt_dir`` are then moved aside, so no
    later run resumes from them. The engine it is attached to is restored under ``engine_key`` (a config cannot
    name the trainer inside the trainer's own handler list).

    With ``meta`` (the run's :class:`~medgen.networks.weights_meta.WeightsMeta`) a checkpoint is resumed only when
    its recorded fingerprint (training data, classes, image size, channels, network, scheduler) is the run's own;
    otherwise the run stops with one line saying what differs. With ``run_dir`` the run is recorded in
    ``<run_dir>/run.json`` (fingerprint, ``summary`` of the config, medgen version, start time).
    """

    def __init__(self, ckpt_dir: str | Path, load_dict: Mapping[str, Any], enabled: bool = True,
                 map_location: str | None = "cpu", engine_key: str | None = "trainer", meta: Any = None,
                 run_dir: str | Path | None = None, summary: Mapping[str, Any] | None = None) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.engine_key = engine_key
        self.meta = meta
        self.run_dir = Path(run_dir) if run_dir else None
        self.summary = dict(summary or {})
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from medgen.engine.runs import check_resume, set_aside_checkpoints, write_run_record

        first_rank = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if self.run_dir is not None:
            logger.info("run folder %s", self.run_dir)
        path = check_resume(self.ckpt_dir, self.meta, self.enabled)
        if path is None:
            if not self.enabled and first_rank:
                set_aside_checkpoints(self.ckpt_dir)
            logger.info("no checkpoint in %s: training from scratch", self.ckpt_dir)
        else:
            configured = _learning_rates(self.load_dict)
            load_dict = _present_in(path, self.load_dict)
            CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=self.map_location)(engine)
            _restore_learning_rates(self.load_dict, configured)  # this run's --learning_rate, not the saved one
            self.resumed_from = path
            logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
        if self.run_dir is not None and first_rank:
            write_run_record(self.run_dir, self.meta, self.summary, resumed_from=self.resumed_from)


#: entries a checkpoint written before they existed may lack: resumed without them (the schedule starts over)
OPTIONAL_ENTRIES = ("lr_scheduler",)


def _present_in(path: Path, load_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``load_dict`` less the optional entries the checkpoint at ``path`` does not have."""
    missing = [k for k in OPTIONAL_ENTRIES if k in load_dict]
    if missing:
        keys = set(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        missing = [k for k in missing if k not in keys]
        for key in missing:
            logger.info("%s has no %s: it starts anew", path, key)
    return {k: v for k, v in load_dict.items() if k not in missing}


def _learning_rates(load_dict: Mapping[str, Any]) -> dict[str, list[float]]:
    """The base learning rate of each param group of each optimizer in ``load_dict``, as this run configured it
    (before a learning-rate schedule scales it)."""
    return {key: [group.get("initial_lr", group["lr"]) for group in obj.param_groups]
            for key, obj in load_dict.items() if isinstance(obj, torch.optim.Optimizer)}


def _restore_learning_rates(load_dict: Mapping[str, Any], rates: Mapping[str, list[float]]) -> None:
    """Put the configured learning rates back after ``CheckpointLoader`` restored the saved ``param_groups``: a
    resumed run with ``--learning_rate`` (e.g. lowered after a divergence) trains at that rate, scaled by the
    restored schedule's factor at its restored step when the run has a ``LambdaLR`` schedule."""
    schedules = [s for s in load_dict.values() if isinstance(s, torch.optim.lr_scheduler.LambdaLR)]
    for key, lrs in rates.items():
        optimizer = load_dict[key]
        schedule = next((s for s in schedules if s.optimizer is optimizer), None)
        for i, (group, lr) in enumerate(zip(optimizer.param_groups, lrs)):
            if group.get("initial_lr", group["lr"]) != lr:
                logger.info("learning rate %g (this run's) instead of the checkpoint's %g", lr,
                            group.get("initial_lr", group["lr"]))
            group["initial_lr"] = lr
            group["lr"] = lr * (schedule.lr_lambdas[i](schedule.last_epoch) if schedule is not None else 1.0)
        if schedule is not None:
            schedule.base_lrs = list(lrs)


def non_finite_entries(obj: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "tensor"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    bad: list[str] = []
    for k, v in items:
        bad += non_finite_entries(v, f"{prefix}.{k}" if prefix else str(k))
    return bad


def _refuse_non_finite(state: Any, path: Path) -> None:
    bad = non_finite_entries(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise FloatingPointError(
            f"{path} not written: NaN/Inf in {', '.join(bad[:3])}{more} (training diverged); lower the learning "
            "rate or set --precision fp32, then rerun: it resumes from the last good checkpoint")


def save_state_dict_atomic(module: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """``torch.save(module.state_dict())`` (floats as ``dtype``) crash-safely (:func:`medgen.fileio.atomic_write`).

    Weights holding NaN/Inf (also after the cast to ``dtype``) are refused with ``FloatingPointError``, so a
    diverged run never replaces good weights.
    """
    path = Path(path)
    state = {k: v.detach().to(dtype).cpu() if v.is_floating_point() else v.cpu()
             for k, v in module.state_dict().items()}
    _refuse_non_finite(state, path)
    return torch_save_atomic(state, path)


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` made crash-safe: temporary file, fsync, rename, folder fsync
    (:func:`medgen.fileio.atomic_write`); non-finite weights are refused; a file that ``n_saved`` rotates out is
    deleted only after the next save succeeded, so a failed save (a kill, a full disk) keeps the older checkpoints.
    ``filename`` fixes the file name (MONAI's ``final_filename``).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        _refuse_non_finite(checkpoint, path)
        with atomic_write(path) as f:
            func(checkpoint, f, **self.kwargs)
        pending, self._to_remove = self._to_remove, []
        for name in pending:
            if name != path.name:
                (self.dirname / name).unlink(missing_ok=True)
        if pending:
            fsync_dir(self.dirname)

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (interval and final checkpoints, ``n_saved`` rotation) made crash-safe, that also
    saves the engine it is attached to under ``engine_key``, so epoch and iteration resume with the weights,
    optimizer and EMA.

    Every file is written by :class:`AtomicDiskSaver`. The final checkpoint is written only when training
    completes (also when stopped by a time limit), never when it fails: a failed run leaves its last good interval
    checkpoint for the next run to resume from. A full disk or diverged (NaN/Inf) training ends the run with one
    line (``SystemExit``, exit code 1) instead of a traceback.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str | None = "trainer", **kwargs: Any) -> None:
        self._engine_key = engine_key
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        if self._engine_key:
            # ignite's Checkpoint keeps a reference to this dict: adding the engine here makes it part of each save
            self.save_dict[self._engine_key] = engine
        super().attach(engine)
        if self._final_checkpoint is None:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)
        if self._interval_checkpoint is not None and self._interval_checkpoint.n_saved is not None:
            engine.add_event_handler(Events.STARTED, self._adopt_saved)

    def _adopt_saved(self, engine: Engine) -> None:
        """Count the interval checkpoints earlier runs left in ``save_dir`` (up to the resumed epoch) towards
        ``n_saved``, so rotation keeps ``n_saved`` files across interrupted and resumed runs."""
        checkpoint = self._interval_checkpoint
        prefix = f"{checkpoint.filename_prefix}_" if checkpoint.filename_prefix else ""
        pattern = re.compile(rf"^{re.escape(prefix)}checkpoint_{re.escape(str(checkpoint.score_name))}=(\d+)\.pt$")
        now = engine.state.epoch if self.epoch_level else engine.state.iteration
        found = sorted((int(m.group(1)), p.name) for p in Path(self.save_dir).glob("*.pt")
                       if (m := pattern.match(p.name)) and int(m.group(1)) <= now)
        known = {item.filename for item in checkpoint._saved}
        saved = sorted([*checkpoint._saved, *(checkpoint.Item(n, name) for n, name in found if name not in known)],
                       key=lambda it: it.priority)
        excess = max(len(saved) - checkpoint.n_saved, 0)
        if excess and _first_rank():  # the newest n_saved stay, the one this run resumed from among them
            for item in saved[:excess]:
                (Path(self.save_dir) / item.filename).unlink(missing_ok=True)
            fsync_dir(self.save_dir)
        checkpoint._saved = saved[excess:]

    def exception_raised(self, engine: Engine, e: BaseException) -> None:
        """Training failed: write no final checkpoint; the user's errors (full disk, divergence) as one line."""
        logger.error("training stopped by an error at epoch %d, iteration %d: no final checkpoint written",
                     engine.state.epoch, engine.state.iteration)
        if isinstance(e, (DiskFullError, FloatingPointError)):
            raise SystemExit(f"medgen: error: {e}") from e
        raise e
