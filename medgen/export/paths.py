"""Paths confined to a folder: what a samples.jsonl line names, what export writes and what send reads stay inside
their folder; ``..``, absolute paths and symlinks that lead out are refused.

The standard library resolves (``os.path.realpath``) and compares (``Path.is_relative_to``); this module is only the
rule and its one-line messages.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["UnsafePathError", "confined_path", "inside", "resolved"]


class UnsafePathError(ValueError):
    """A path that would leave its folder; ``str()`` is one line naming the path, the folder and why."""

    def __init__(self, path: object, root: str | os.PathLike, why: str) -> None:
        self.path, self.root, self.why = path, Path(root), why
        super().__init__(f"refused {str(path)!r}: {why}")


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with every symlink and ``..`` resolved (the part that does not exist yet kept as written)."""
    return Path(os.path.realpath(path))


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path``, symlinks resolved, is ``root`` or lies below it (``root`` resolved too)."""
    return resolved(path).is_relative_to(resolved(root))


def confined_path(root: str | os.PathLike, rel: object, folder: str = "the folder") -> Path:
    """``root / rel`` when ``rel`` is a relative path without ``..`` that stays inside ``root`` once symlinks are
    resolved (an existing link at any level included); else :class:`UnsafePathError`. ``folder`` names ``root`` in
    the message (e.g. "the samples folder")."""
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePathError(rel, root, f"not a file name; give a path inside {folder} {root}")
    if "\x00" in rel:
        raise UnsafePathError(rel, root, "a NUL character in the name")
    if os.path.isabs(rel) or PureWindowsPath(rel).anchor:
        raise UnsafePathError(rel, root, f"an absolute path; give a path relative to {folder} {root}")
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        raise UnsafePathError(rel, root, f"'..' leads out of {folder} {root}; give a path inside it")
    path = Path(root) / rel
    if not inside(root, path):
        raise UnsafePathError(rel, root, f"a symlink to {resolved(path)}, outside {folder} {resolved(root)}")
    return path
