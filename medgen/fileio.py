"""Crash-safe file writes: every file a run writes goes through here.

A file is written to a temporary file in the same folder (``.<name>.<random>.tmp``), flushed and fsynced, then
renamed over the target with ``os.replace`` and the folder fsynced: a reader sees the old file or the new one, never
half of one, whatever kills the writer. A write that fails (a full disk, a kill) removes its temporary file and
leaves the previous file as it was. Python, PIL and torch write non-atomically; this module is that gap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TMP = re.compile(r"^\.(?P<name>.+?)\.(?:[0-9a-f]{8}\.)?tmp$")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write failed because the disk (or quota) is full; the message names the file, the previous file is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_temp_file(path: str | Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (left behind only by a killed writer)."""
    return bool(_TMP.match(Path(path).name))


def temp_files(folder: str | Path, target: str | None = None) -> list[Path]:
    """Temporary files of :func:`atomic_write` in ``folder`` (of the file named ``target`` only, if given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        m = _TMP.match(entry.name)
        if m and (target is None or m.group("name") == target) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)


def remove_temp_files(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; returns what was removed."""
    removed = []
    for p in temp_files(folder, target):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so a rename or unlink in it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full_error(path: str | Path, err: OSError | None = None) -> DiskFullError:
    """The one-line error for a write of ``path`` that found the disk full."""
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    reason = "file too large for this file system or its limits" if err is not None and err.errno == errno.EFBIG \
        else "no space left on device"
    kept = f"the previous {path.name} is unchanged" if path.exists() else "no partial file was left"
    return DiskFullError(errno.ENOSPC, f"cannot write {path}: {reason} ({free} in {path.parent}); {kept}: free "
                         "some space or write to another folder, then rerun")


def _full_cause(err: BaseException | None, depth: int = 0) -> OSError | None:
    """The disk-full ``OSError`` behind ``err`` (torch's zip writer re-raises a failed write as a RuntimeError)."""
    if err is None or depth > 8:
        return None
    if isinstance(err, OSError) and err.errno in _FULL:
        return err
    return _full_cause(err.__cause__, depth + 1) or _full_cause(err.__context__, depth + 1)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` durably.

    ``mode`` is ``"wb"`` or ``"w"``. On any error the temporary file is removed, ``path`` stays as it was, and a
    full disk is raised as :class:`DiskFullError` naming ``path``. Temporary files of ``path`` left by a killed
    writer are removed first.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with open(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = _full_cause(err)
        if full is not None and not isinstance(err, DiskFullError):
            raise disk_full_error(path, full) from err
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(data: Any, path: str | Path, indent: int | None = 1) -> Path:
    """``data`` as JSON (a trailing newline; objects JSON does not know as strings) through :func:`atomic_write`."""
    return write_text_atomic(json.dumps(data, indent=indent, default=str) + "\n", path)


def torch_save_atomic(obj: Any, path: str | Path, **kwargs: Any) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f, **kwargs)
    return Path(path)


def append_line(path: str | Path, line: str) -> Path:
    """Append one line to a log file and fsync it; a line cut short by a kill stays alone on its line (and
    :func:`read_json_lines` skips it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    try:
        with open(path, "a+b") as f:
            torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
            f.write((b"\n" if torn else b"") + line.rstrip("\n").encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno in _FULL:
            raise disk_full_error(path, err) from err
        raise
    if created:
        fsync_dir(path.parent)
    return path


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The complete JSON-object lines of a log written by :func:`append_line` (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
