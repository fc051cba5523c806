"""One writer per output folder: a run, samples, evaluation, audit or export folder belongs to one process at a time.

Two trainings started with the same ``--run_name`` would both resume the same checkpoint and overwrite each other's
checkpoints, weights and logs; two sampling jobs into one folder would both make the seeds still missing and write them
twice. :func:`hold_folder` takes an advisory lock on ``<folder>/.medgen-<role>.lock`` with the ``filelock`` library
(``fcntl.flock`` on POSIX, ``msvcrt`` on Windows; torch already depends on it) and keeps it until the process exits
(``medgen train`` and :func:`medgen.bundles.run_bundle`: until the run returns), so the second process stops at once
with one line instead of mixing. The operating system drops the lock when its holder dies, so a killed run leaves
nothing to clean up (the empty lock file stays, as pip's and conda's do: removing it after the release would let a third
process lock a new file while a second still holds the old one; a claim for a ``with`` block removes its own while it
still holds it). Within one process a folder may be claimed again (a workflow that trains, then resumes in the same
interpreter). Roles that may not run beside each other in one folder (shards of two different sharding layouts) are
named by ``conflicts``: a claim takes its own lock first, then finds each such lock free, so of two jobs started
together at least one sees the other.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

#: Locks this process holds, by lock file (kept referenced: a collected ``FileLock`` releases its lock).
_HELD: dict[str, FileLock] = {}


class FolderInUseError(RuntimeError):
    """Another process holds the folder; the message names it and what to do instead."""


def lock_path(folder: str | os.PathLike, role: str) -> Path:
    """The lock file of ``folder`` for ``role`` (``run``, ``samples``, ``samples-shard-1of4``)."""
    return Path(folder) / f".medgen-{role}.lock"


def _in_use(folder: str | os.PathLike, role: str, hint: str) -> FolderInUseError:
    return FolderInUseError(
        f"{Path(folder)} is in use by another process ({role} lock {lock_path(folder, role).name} is held): wait for "
        f"it to finish, or {hint}")


def role_of(name: str) -> str | None:
    """The role of a lock file's name (``.medgen-samples.lock`` -> ``samples``), None for other files."""
    return name[len(".medgen-"):-len(".lock")] if is_lock_file(name) else None


def held_elsewhere(folder: str | os.PathLike, roles: Callable[[str], bool]) -> str | None:
    """The first role of ``folder`` chosen by ``roles`` whose lock another process holds (each is tried and, when
    free, let go at once), else None."""
    paths = sorted(Path(folder).glob(".medgen-*.lock")) if Path(folder).is_dir() else []
    for path in paths:
        role = role_of(path.name)
        key = str(path.resolve())
        if role is None or not roles(role) or key in _HELD:
            continue
        probe = FileLock(key, timeout=0, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            return role
        probe.release()
    return None


def hold_folder(folder: str | os.PathLike, role: str, hint: str,
                conflicts: Callable[[str], bool] | None = None) -> bool:
    """Claim ``folder`` for ``role`` until this process exits or :func:`release_folder`; True when claimed now,
    False when this process already held it. Raises :class:`FolderInUseError` naming the folder and ``hint`` (how
    to use another one) when another process holds it, or holds a role for which ``conflicts(role)`` is true."""
    path = lock_path(folder, role)
    key = str(path.resolve())
    if key in _HELD:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(key, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise _in_use(folder, role, hint) from None
    other = held_elsewhere(folder, lambda r: r != role and conflicts(r)) if conflicts else None
    if other is not None:
        lock.release()
        raise _in_use(folder, other, hint)
    _HELD[key] = lock
    return True


def release_folder(folder: str | os.PathLike, role: str) -> None:
    """Give up a claim this process holds (no-op otherwise)."""
    lock = _HELD.pop(str(lock_path(folder, role).resolve()), None)
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def claims_released_after() -> Iterator[None]:
    """Release, at the end of the block, every claim made inside it (a workflow run in a process that goes on: the
    run folder is free for the next process as soon as the run is over)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before]:
            _HELD.pop(key).release()


@contextlib.contextmanager
def claim_folder(folder: str | os.PathLike, role: str, hint: str,
                 conflicts: Callable[[str], bool] | None = None) -> Iterator[None]:
    """:func:`hold_folder` for the ``with`` block: released at its end unless this process held it before (a
    long-lived process, the service, must not keep one open lock per job). The lock file goes with the claim, so a
    finished samples, evaluation or export folder holds only results; a folder the claim made that is empty then (a
    command stopped by bad input before writing) goes too."""
    made = not Path(folder).exists()
    claimed = hold_folder(folder, role, hint, conflicts)  # only this claim: another thread's claims stay as they are
    try:
        yield
    finally:
        if claimed:
            _remove_lock_file(folder, role, made)
            release_folder(folder, role)


def _remove_lock_file(folder: str | os.PathLike, role: str, remove_folder: bool) -> None:
    """Unlink the lock file while its lock is still held, after the last write: a process trying it meanwhile is
    refused, one that comes after locks a new file in a folder this one no longer writes. Then the folder, if asked and
    empty."""
    with contextlib.suppress(OSError):  # Windows cannot unlink an open file: it stays, empty, as a training's does
        lock_path(folder, role).unlink()
        if remove_folder and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


def holds_output_folder(role: str, verb: str, hint: str = "write to another folder (OUT_DIR)", arg: str = "out_dir",
                        exit_code: int = 2) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command (returning an exit code) that writes the folder given as its argument ``arg``: the command
    holds the folder while it runs, and a second one into it stops at once with ``error: cannot <verb>: ...`` and
    ``exit_code``, before any work."""
    def wrap(command: Callable[..., int]) -> Callable[..., int]:
        signature = inspect.signature(command)

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> int:
            folder = signature.bind(*args, **kwargs).arguments[arg]
            try:
                with claim_folder(folder, role, hint):
                    return command(*args, **kwargs)
            except FolderInUseError as err:
                print(f"error: cannot {verb}: {err}", file=sys.stderr)
                return exit_code
        return run
    return wrap


def is_lock_file(name: str) -> bool:
    """Whether a file name is one of these lock files (left out of result archives)."""
    return name.startswith(".medgen-") and name.endswith(".lock")
