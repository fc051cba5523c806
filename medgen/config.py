"""Early checks of bundle config values, so a wrong key stops the run with one clear line, not a traceback.

Called first in a bundle's run list. MONAI's config parser wraps errors raised while it instantiates components
in long tracebacks; a ``SystemExit`` raised here passes through it and prints only the message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_HINT = (
    "put the data set there, pass --dataset_dir <dir>, or set MEDGEN_DATA_DIR to the folder that holds "
    "chest_xray_kermany_224/ (see README.md, 'Data')"
)


def fail(message: str) -> None:
    raise SystemExit(f"medgen: error: {message}")


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(f"config key '{name}' must be a positive integer, got {value!r} ({type(value).__name__})")
    return value


def check_classes(classes: Any) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        fail(f"config key 'classes' must be a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        fail(f"config key 'classes' has duplicates: {classes}")
    return list(classes)


def check_data_source(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        fail(f"config key 'dataset_dir' must be a path, got {path!r}")
    p = Path(path)
    if not p.exists():
        fail(f"data directory {p} does not exist; {DATA_HINT}")
    return p


def check_types(image_size: Any, batch_size: Any, max_epochs: Any, classes: Any) -> None:
    """Types and ranges of the keys a user most often overrides."""
    check_positive_int("image_size", image_size)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_epochs", max_epochs)
    check_classes(classes)


def check_training(dataset_dir: Any, image_size: Any, batch_size: Any, max_epochs: Any,
                   classes: Sequence[str]) -> None:
    """All checks a training run makes before building anything."""
    check_types(image_size, batch_size, max_epochs, classes)
    check_data_source(dataset_dir)


def check_exit(code: int, step: str) -> int:
    """Stop a bundle run when a step that returns an exit code (export, send) failed."""
    if code:
        fail(f"{step} finished with exit code {code}; see the messages above")
    return code


def datalist_or_exit(source: Any, **kwargs: Any) -> dict:
    """``resolve_datalist`` for bundle configs: a data problem (missing folder, unknown or empty class, bad
    CSV) ends the run with its one-line message instead of a traceback through MONAI's config parser."""
    from medgen.data.datalist import DatalistError, resolve_datalist

    try:
        return resolve_datalist(check_data_source(source), **kwargs)
    except DatalistError as err:
        fail(str(err))
        raise  # unreachable: fail() raises
