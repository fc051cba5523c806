"""Index a DICOM tree (nested folders, files with or without extension, DICOMDIR) into labelled items.

Each readable grey slice becomes ``{"image": abs_path, "label_name": str}``; every other file is counted in the
summary under a reason and, unless it is a DICOMDIR or a hidden file, listed in ``errors`` with a message.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from pathlib import Path

import pydicom

from medgen.data.dicom import DicomReadError, check_dicom_header, read_dicom_image

__all__ = ["index_dicom_tree"]

_UID_KEYS = ("sopinstanceuid", "sop_instance_uid", "sop_uid")
_PATH_KEYS = ("file", "path", "image", "filename")


def _dicomdir_files(dicomdir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files referenced by a DICOMDIR (ReferencedFileID relative to its folder) and errors for missing ones."""
    files, errors = [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(dicomdir, force=True)
        records = ds.DirectoryRecordSequence
    except Exception as exc:
        return [], [(str(dicomdir), f"{dicomdir}: unreadable DICOMDIR ({type(exc).__name__}: {exc})")]
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        target = dicomdir.parent.joinpath(*parts)
        if target.is_file():
            files.append(target)
        else:
            errors.append((str(target), f"{target}: referenced by {dicomdir} but missing"))
    return files, errors


def _load_label_map(labels_csv: str | os.PathLike, label_column: str, key_column: str | None) -> tuple[str, dict]:
    """Read a CSV into {key: label}; returns ("uid" | "path", mapping)."""
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if label_column not in fields:
            raise ValueError(f"{labels_csv}: no column {label_column!r} (columns: {fields})")
        if key_column is None:
            lower = {c.lower(): c for c in fields}
            key_column = next((lower[k] for k in _UID_KEYS + _PATH_KEYS if k in lower), None)
            if key_column is None:
                raise ValueError(f"{labels_csv}: no key column; name one with key_column= (e.g. SOPInstanceUID, file)")
        elif key_column not in fields:
            raise ValueError(f"{labels_csv}: no column {key_column!r} (columns: {fields})")
        kind = "uid" if key_column.lower() in _UID_KEYS else "path"
        mapping = {row[key_column].strip(): row[label_column].strip() for row in reader if row.get(key_column)}
    return kind, mapping


def _label_for(path: Path, root: Path, kind: str | None, mapping: dict, sop_uid: str) -> str | None:
    if kind == "uid":
        return mapping.get(sop_uid)
    rel = path.relative_to(root)
    if kind == "path":
        for key in (rel.as_posix(), str(path), str(rel)):
            if key in mapping:
                return mapping[key]
        return None
    return rel.parts[0] if len(rel.parts) > 1 else None


def index_dicom_tree(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    label_column: str = "label",
    key_column: str | None = None,
    check_pixels: bool = False,
) -> tuple[list[dict], dict]:
    """Walk ``root`` and return (items, summary).

    Labels come from the first-level folder under ``root``, or from ``labels_csv`` keyed by SOPInstanceUID or by
    file path (relative to ``root`` or absolute; the key column is auto-detected unless ``key_column`` is given).
    Each file's header is checked (grey, single frame, PixelData present and complete, decoder installed);
    ``check_pixels=True`` also decodes it. Summary: ``{"skipped": {reason: count}, "errors": [(path, message)],
    "indexed": n}``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    kind, mapping = (None, {}) if labels_csv is None else _load_label_map(labels_csv, label_column, key_column)
    skipped: Counter = Counter()
    errors: list[tuple[str, str]] = []

    candidates: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                skipped["hidden"] += 1
            elif name.upper() == "DICOMDIR":
                skipped["dicomdir"] += 1
                referenced, missing = _dicomdir_files(path)
                candidates.extend(referenced)
                errors.extend(missing)
                skipped["missing"] += len(missing)
            else:
                candidates.append(path)

    items: list[dict] = []
    seen: set[Path] = set()
    for path in candidates:
        path = path.resolve()
        if path in seen:
            continue
        seen.add(path)
        try:
            if check_pixels:
                _, meta = read_dicom_image(path)
                sop_uid = meta["sop_instance_uid"]
            else:
                sop_uid = str(check_dicom_header(path).get("SOPInstanceUID", ""))
        except DicomReadError as exc:
            skipped[exc.reason] += 1
            errors.append((str(path), str(exc)))
            continue
        label = _label_for(path, root, kind, mapping, sop_uid)
        if not label:
            skipped["no_label"] += 1
            where = "in labels CSV" if kind else "(file is not inside a class folder under root)"
            errors.append((str(path), f"{path}: no label {where}"))
            continue
        items.append({"image": str(path), "label_name": label})
    return items, {"skipped": dict(skipped), "errors": errors, "indexed": len(items)}
