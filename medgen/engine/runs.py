"""Run folders: one per training run, so runs never mix.

``runs_dir/<bundle>/<UTC timestamp>`` by default (a new folder every time), ``runs_dir/<bundle>/<run_name>`` when
named; ``runs_dir`` is ``$MEDGEN_RUNS_DIR`` or ``./runs``. A run resumes only from a checkpoint whose recorded
fingerprint (training data, classes, image size, channels, network, scheduler) equals its own, and records itself in
``run.json``. MONAI and ignite have no notion of a run folder; this module is that gap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medgen.networks.weights_meta import datalist_fingerprint, differences, fingerprint, read_meta, write_json_atomic

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
FRESH_HINT = "start fresh with --resume false, or train into another folder with --run-name NAME or --output-dir DIR"


def default_runs_dir() -> str:
    """``$MEDGEN_RUNS_DIR`` or ``runs`` (in the current folder)."""
    return os.environ.get("MEDGEN_RUNS_DIR") or "runs"


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _calling_parser() -> Any:
    """The ``monai.bundle`` ``ConfigParser`` whose config expression is calling, or ``None`` (read from the call
    frames: MONAI passes nothing to an expression)."""
    import sys

    from monai.bundle import ConfigParser

    frame = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner
        frame = frame.f_back
    return None


def run_dir(runs_dir: str | os.PathLike | None, bundle: str, run_name: str | None = None) -> str:
    """The folder of a training run: ``<runs_dir>/<bundle>/<run_name>``, or a new ``<timestamp>`` folder.

    A timestamp folder is claimed by creating it, so two runs started in the same second get two folders
    (``-2``, ``-3`` ...). Processes of one ``torchrun`` job share the folder named after its run id.
    """
    from medgen.config import fail

    base = Path(runs_dir or default_runs_dir()).resolve() / bundle
    if run_name is not None:
        name = str(run_name)
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            fail(f"config key 'run_name' must be a plain folder name, got {run_name!r}")
        return str(base / name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if job in ("", "none"):
            fail("multi-process training needs --run-name NAME or --output-dir DIR, so every process writes the "
                 "same run folder")
        return str(base / f"ddp-{job}")
    # one folder per workflow: MONAI evaluates output_dir again after a reset, and `--tracking` evaluates it first
    parser = _calling_parser()
    claimed = parser.__dict__.setdefault("_medgen_run_dirs", {}) if parser is not None else {}
    if (str(base), bundle) in claimed and Path(claimed[str(base), bundle]).is_dir():
        return claimed[str(base), bundle]
    base.mkdir(parents=True, exist_ok=True)
    stamp = _timestamp()
    for k in range(1, 1000):
        path = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        claimed[str(base), bundle] = str(path)
        return str(path)
    fail(f"cannot make a new run folder in {base}")
    raise AssertionError  # unreachable: fail() raises


def checkpoint_problem(ckpt: Path, meta: Mapping[str, Any]) -> str | None:
    """Why ``ckpt`` may not be resumed by a run whose weights metadata is ``meta`` (None when it may)."""
    found = read_meta(ckpt, warn=False)
    if found is None:
        return f"checkpoint {ckpt} records no training-data fingerprint, so it cannot be checked against this run"
    diffs = differences(fingerprint(found), fingerprint(meta), labels=("checkpoint", "this run"))
    if diffs:
        return f"checkpoint {ckpt} is of another run: {'; '.join(diffs)}"
    return None


def check_resume(ckpt_dir: str | Path, meta: Any, enabled: bool = True) -> Path | None:
    """The checkpoint a run with metadata ``meta`` (a dict or :class:`WeightsMeta`) resumes from, or None.

    Stops with one line when the newest checkpoint in ``ckpt_dir`` is of another run (other data, classes, image
    size, channels, network or scheduler), naming what differs and how to start fresh or use another folder.
    """
    from medgen.config import fail
    from medgen.engine.checkpoints import latest_checkpoint

    if not enabled:
        return None
    path = latest_checkpoint(ckpt_dir)
    if path is None or meta is None:
        return path
    problem = checkpoint_problem(path, getattr(meta, "meta", meta))
    if problem:
        fail(f"cannot resume: {problem}; {FRESH_HINT}")
    return path


def claim_run_folder(output_dir: str | Path) -> str:
    """Claim the run folder for this process (the first of a multi-process run) until it exits, before anything in
    it is read or tidied (:func:`medgen.folder_lock.hold_folder`): a second training into a folder another process
    trains in stops with one line, its checkpoints, weights and logs untouched. Returns ``output_dir``."""
    from medgen.config import fail
    from medgen.folder_lock import FolderInUseError, hold_folder

    if int(os.environ.get("RANK", "0")) == 0:
        try:
            hold_folder(output_dir, "run", "train into another folder with --run_name NAME or --output_dir DIR")
        except FolderInUseError as err:
            fail(f"cannot train: {err}")
    return str(output_dir)


def check_batches(dataloader: Any, dataset_dir: Any) -> int:
    """The iterations one epoch of ``dataloader`` makes; stops with one line when it makes none.

    Training drops the last incomplete batch (``drop_last``), so fewer usable images than ``batch_size`` (per
    process under DDP) would otherwise finish at once, exit 0 and write no weights.
    """
    from medgen.config import fail

    iterations = len(dataloader)
    if iterations == 0:
        images = len(dataloader.dataset)
        fail(f"{dataset_dir}: {images} usable training image(s) make no full batch of {dataloader.batch_size} "
             f"(per process); set batch_size to {max(images, 1)} or fewer, or add images")
    return iterations


def set_aside_checkpoints(ckpt_dir: str | Path) -> Path | None:
    """Move the checkpoints a fresh run must not resume from into ``<ckpt_dir>/replaced-<timestamp>/``."""
    ckpt_dir = Path(ckpt_dir)
    old = sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if not old:
        return None
    dest = ckpt_dir / f"replaced-{_timestamp()}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in old:
        shutil.move(str(p), dest / p.name)
    logger.warning("starting fresh: %d earlier checkpoint(s) in %s moved to %s", len(old), ckpt_dir, dest)
    return dest


def write_run_record(output_dir: str | Path, meta: Any, summary: Mapping[str, Any] | None = None,
                     resumed_from: str | Path | None = None) -> Path:
    """``<output_dir>/run.json``: fingerprint, config summary, medgen version, start time (atomic write)."""
    from medgen import __version__

    meta = getattr(meta, "meta", meta) or {}
    path = Path(output_dir) / RUN_FILE
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        earlier = json.loads(path.read_text()) if resumed_from and path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        earlier = {}
    record = {
        "run_dir": str(Path(output_dir).resolve()),
        "started": now,
        "first_started": earlier.get("first_started") or earlier.get("started") or now,
        "medgen_version": __version__,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "fingerprint": fingerprint(meta),
        "weights_meta": meta,
        "config": dict(summary or {}),
    }
    return write_json_atomic(record, path)


REDACTED_KEY = "redacted"


def salted_id(salt: str, path: str) -> str:
    """``sha256:<hex>`` of ``salt + path``: names a file without saying where it is; whoever holds the path and the
    salt can check it."""
    return "sha256:" + hashlib.sha256((salt + path).encode()).hexdigest()


def redact_datalist(datalist: Mapping[str, Any], salt: str | None = None) -> dict:
    """A copy of ``datalist`` without source paths (PHI: folder and file names may carry patient names or record
    numbers): every item's ``image`` (and any other path-like text) becomes :func:`salted_id`, ``source`` is
    dropped; labels, classes and in-file addresses stay. ``redacted`` records the salt, the method and the
    ``datalist_sha256`` of the original, which the weights record too (so a run folder still shows which data it
    was trained on)."""
    from medgen.networks.weights_meta import plain

    salt = salt or secrets.token_hex(16)

    def item(it: Any) -> Any:
        if not isinstance(it, Mapping):
            return it
        return {k: salted_id(salt, str(v)) if k == "image" or (isinstance(v, str) and ("/" in v or "\\" in v))
                else v for k, v in it.items()}

    out: dict[str, Any] = {}
    for key, value in plain(dict(datalist)).items():
        if key == "source":
            continue
        out[key] = [item(it) for it in value] if key in ("training", "validation", "test") else value
    out[REDACTED_KEY] = {"method": "image = sha256(salt + path)", "salt": salt,
                         "datalist_sha256": datalist_fingerprint(datalist)}
    return out


def _earlier_salt(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get(REDACTED_KEY, {}).get("salt")
    except (OSError, ValueError, AttributeError):
        return None


def keep_datalist(datalist: dict, output_dir: str | Path, ckpt_dir: str | Path, resume: bool = True,
                  write: bool = True, redact_paths: bool = False) -> dict:
    """Write ``datalist`` as ``<output_dir>/datalist.json`` and return it, unless the run folder holds a checkpoint
    this run would resume that was trained on other data: then stop with one line before anything is overwritten
    or cached (the rest of the fingerprint is checked by :func:`check_resume`). With ``write``, first claims the
    folder (:func:`medgen.folder_lock.hold_folder`): a run into a folder another process trains in stops with one
    line. ``write=False``: check only (the processes of a multi-process run other than the first).
    ``redact_paths`` (config key ``redact_paths``): the copy is :func:`redact_datalist` (same salt on resume);
    training and the resume check use ``datalist`` itself, so resuming works as without it. Without it the copy
    names every source file: it is patient data (PHI)."""
    from medgen.config import fail
    from medgen.data.datalist import write_datalist
    from medgen.engine.checkpoints import latest_checkpoint

    if write:  # configs claim it first thing; this covers any other way in (a multi-process run's first process)
        claim_run_folder(output_dir)
    path = latest_checkpoint(ckpt_dir) if resume else None
    if path is not None:
        found = read_meta(path, warn=False)
        if found is None:
            fail(f"cannot resume: {checkpoint_problem(path, {})}; {FRESH_HINT}")
        mine = {"classes": [str(c) for c in datalist.get("classes", [])],
                "datalist_sha256": datalist_fingerprint(datalist)}
        diffs = differences({k: found.get(k) for k in mine}, mine, labels=("checkpoint", "this run"))
        if diffs:
            fail(f"cannot resume: checkpoint {path} was trained on other data: {'; '.join(diffs)}; {FRESH_HINT}")
    if write:
        from medgen.fileio import DiskFullError

        try:
            out = Path(output_dir) / "datalist.json"
            write_datalist(redact_datalist(datalist, _earlier_salt(out)) if redact_paths else datalist, out)
        except DiskFullError as err:
            fail(str(err))
    return datalist
