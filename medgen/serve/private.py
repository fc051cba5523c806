"""Owner-only files for the service's state: folders 0700, files 0600, whatever the process umask.

The job database holds key hashes and job requests, and the results are images made for one key, so nothing the
service writes is for other local users. Modes are set with ``chmod`` after creation, since ``mkdir``/``open``
modes are masked by the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700. A shared folder (sticky bit, like ``/tmp``) is
    refused rather than closed to its other users."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & stat.S_ISVTX:
        raise ValueError(f"{path} is a shared folder (sticky bit set); give the service a folder of its own, "
                         "e.g. --data-dir ~/.medgen/serve")
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError as err:
        raise ValueError(f"{path}: cannot make it owner-only (0700): {err.strerror}; use a folder this user owns "
                         "(--data-dir)") from err
    return path


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty if missing (parents 0700) and make it 0600, without following a symlink."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def make_private(root: str | Path) -> None:
    """Set 0700 on ``root`` and every folder under it and 0600 on every file; symlinks are left alone."""
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        return
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), FILE_MODE)
