"""Build MONAI datalists (``{"training": [...], "validation": [...], "test": [...]}``) from image sources.

Sources: a class-folder tree (keeping a ``train``/``test`` split found in it), a MedMNIST ``.npz`` (its official
splits), a CSV of path and label columns (CheXpert-style 1 / 0 / -1 / blank with an uncertainty policy), or a DICOM
tree. Splits are stratified and reproducible from a seed. MONAI has no datalist *builder* (only
``load_decathlon_datalist``, a reader), so this module fills that gap; the output is read back with MONAI's reader.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz", ".npy"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
JUNK_DIRS = {"__macosx", "@eadir", "$recycle.bin", "system volume information", "__pycache__"}
SPLIT_ALIASES = {
    "train": "training", "training": "training",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones", "soft")


class DatalistError(ValueError):
    """A data source cannot be turned into a datalist; the message names the path and the fix."""


@dataclass
class IndexSummary:
    """What an indexing run kept and skipped, printed for the user."""

    skipped: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # skipped file -> its reason
    converted: Counter = field(default_factory=Counter)  # what reading does to kept files -> how many
    colour_kinds: dict[str, Counter] = field(default_factory=dict)  # class -> {"grey": n, "colour": n} (content)
    stored_grey: int = 0  # kept files stored with one channel (replicated for a colour model)
    include_synthetic: bool = False  # keep synthetic images (each item marked "synthetic": true) instead of skipping
    synthetic: dict[str, str] = field(default_factory=dict)  # kept synthetic file -> how it was recognised

    def skipped_text(self) -> str:
        """``1 not an image (.txt), 2 synthetic image (...)``: the skips by reason, for a message."""
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("%s", message)

    def note_kind(self, kind: Any, class_name: str) -> None:
        """Count a kept file by its :class:`~medgen.data.image_check.FileKind`: the conversion reading makes of its
        stored mode (RGBA, palette, CMYK, ...), whether it is stored grey, and whether its class holds it as grey or
        colour content (a grey picture saved as RGB is grey)."""
        from medgen.data.image_check import GREY_MODES, MODE_CONVERSIONS

        if kind.mode in MODE_CONVERSIONS:
            self.converted[MODE_CONVERSIONS[kind.mode]] += 1
        self.stored_grey += kind.mode is None or kind.mode in GREY_MODES
        self.colour_kinds.setdefault(class_name, Counter())["colour" if kind.colour else "grey"] += 1

    def decide_channels(self, channels: int | None = None) -> None:
        """Log what reading does with grey and colour files for a model of ``channels`` channels, with counts: a
        colour model repeats grey images in 3 channels, a grey model reads colour ones as ITU-R 601 luma; a class
        folder that mixes both gets a warning of its own. ``None`` (channels unknown): both outcomes are named."""
        colour = sum(c["colour"] for c in self.colour_kinds.values())
        if channels == 3 and self.stored_grey:
            self.converted["grey replicated to 3 channels"] += self.stored_grey
        elif channels == 1 and colour:
            self.converted["colour converted to grey (ITU-R 601 luma)"] += colour
        if channels == 3:
            decision = "the grey ones are replicated to 3 channels (this model is RGB)"
        elif channels == 1:
            decision = "the colour ones are converted to grey with ITU-R 601 luma (this model is grey)"
        else:
            decision = ("a grey model reads the colour ones as grey (ITU-R 601 luma), a colour model replicates "
                        "the grey ones to 3 channels")
        for name, kinds in sorted(self.colour_kinds.items()):
            if kinds["grey"] and kinds["colour"]:
                self.warn(f"class {name!r} mixes {kinds['grey']} grey and {kinds['colour']} colour images: "
                          f"{decision}")
        for decision_text, n in sorted(self.converted.items()):
            logger.info("reading converts %d file(s): %s", n, decision_text)

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped[reason] += 1
        self.reasons[str(path)] = reason
        logger.debug("skipped %s: %s", path, reason)


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def _looks_like_image(path: Path, summary: IndexSummary) -> bool:
    if path.name.lower() in JUNK_NAMES or path.name.startswith("._"):
        summary.skip(path, "system file")
        return False
    if suffix_of(path) not in IMAGE_SUFFIXES:
        summary.skip(path, f"not an image ({suffix_of(path) or 'no extension'})")
        return False
    if path.stat().st_size == 0:
        summary.skip(path, "empty file")
        summary.errors.append((str(path), f"{path}: empty file (0 bytes)"))
        return False
    return not _synthetic(path, summary)


def _synthetic(path: Path, summary: IndexSummary) -> bool:
    """Whether ``path`` is a synthetic image to skip (:func:`medgen.data.provenance.synthetic_reason`): a real data
    set never takes medgen's output (or another generator's marked images) as real images. With
    ``summary.include_synthetic`` (a classifier's training set, real + synthetic) it is kept and noted instead, and
    its item is marked ``"synthetic": true`` (:func:`_mark_synthetic`)."""
    from medgen.data.provenance import synthetic_reason

    reason = synthetic_reason(path)
    if reason and summary.include_synthetic:
        summary.synthetic[str(path.resolve())] = reason
        return False
    if reason:
        summary.skip(path, reason)
    return reason is not None


def _mark_synthetic(items: dict[str, list[dict]], summary: IndexSummary) -> None:
    """``"synthetic": true`` on the items of the synthetic images kept (``include_synthetic``)."""
    for split_items in items.values():
        for item in split_items:
            if item["image"] in summary.synthetic:
                item["synthetic"] = True


def _first_synthetic(datalist: dict[str, Any]) -> tuple[str, str] | None:
    """``(file, reason)`` of the first item of a datalist (written by hand, say) that is a synthetic image
    (:func:`medgen.data.provenance.synthetic_reason`: headers and folders only, nothing decoded), else None."""
    from medgen.data.provenance import synthetic_reason

    for split in ("training", "validation", "test"):
        for item in datalist.get(split) or []:
            image = item.get("image") if isinstance(item, dict) else None
            reason = synthetic_reason(image) if isinstance(image, str) and os.path.isfile(image) else None
            if reason:
                return image, reason
    return None


def synthetic_items(datalist: dict[str, Any]) -> list[dict]:
    """The items of a datalist marked ``"synthetic": true`` (``medgen data index --include-synthetic``)."""
    return [it for split in ("training", "validation", "test") for it in datalist.get(split) or []
            if isinstance(it, dict) and it.get("synthetic")]


def _readable(path: Path, summary: IndexSummary, verify: bool) -> bool:
    """Index-time check of PNG/JPEG/BMP/TIFF, .npy and DICOM files (``medgen.data.image_check.check_image_file``):
    decoded cheaply, with a pixel limit, and skipped with a reason when truncated, undecodable, oversized, too
    small, NaN/Inf or constant. NIfTI is checked per slice (``_nifti_items``)."""
    if not verify or suffix_of(path) in (".nii", ".nii.gz"):
        return True
    from medgen.data.image_check import ImageLoadError, check_image_file

    try:
        check_image_file(path)
    except ImageLoadError as err:
        summary.skip(path, err.reason)
        summary.errors.append((str(path), str(err)))
        return False
    return True


def _check_files(paths: list[Path], verify: bool) -> list[Any]:
    """``check_image_file`` on each path, in threads (PIL, zlib and numpy decode without the GIL): the
    ``ImageLoadError`` for each bad file, else the file's ``FileKind`` (None for NIfTI, and for every file when
    ``verify`` is off)."""
    if not verify:
        return [None] * len(paths)
    from concurrent.futures import ThreadPoolExecutor

    from medgen.data.image_check import ImageLoadError, check_image_file

    def check(path: Path) -> Any:
        if suffix_of(path) in (".nii", ".nii.gz"):
            return None  # checked per slice by _nifti_items
        try:
            return check_image_file(path)
        except ImageLoadError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check, paths))


def stratified_split(
    items: list[dict], fractions: dict[str, float], seed: int = 0
) -> dict[str, list[dict]]:
    """Split ``items`` per label into the named fractions (the last split takes the remainder)."""
    rng = random.Random(seed)
    by_label: dict[Any, list[dict]] = defaultdict(list)
    for item in items:
        by_label[item["label"]].append(item)
    names = list(fractions)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for label in sorted(by_label, key=str):
        group = sorted(by_label[label], key=lambda d: json.dumps(d, sort_keys=True))
        rng.shuffle(group)
        start = 0
        for i, name in enumerate(names):
            stop = len(group) if i == len(names) - 1 else start + int(round(fractions[name] * len(group)))
            out[name].extend(group[start:stop])
            start = stop
    for name in names:
        out[name].sort(key=lambda d: (d["label"], str(d["image"]), d.get("npz_index", 0)))
    return out


def _split_folder_name(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.lower())


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders that can hold images: not hidden, not an archiver's or OS's own (``__MACOSX``, ...)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in JUNK_DIRS)


def _nifti_items(item: dict, options: dict | None, summary: IndexSummary) -> list[dict]:
    """One datalist item per chosen 2D slice of a NIfTI volume (see ``nifti_slice_indices``)."""
    from medgen.data.image_check import nifti_slice_indices

    options = options or {}
    axis = int(options.get("axis", 2))
    try:
        indices = nifti_slice_indices(item["image"], axis, options.get("index_range"),
                                      float(options.get("min_foreground", 0.1)))
    except Exception as err:  # nibabel raises several types for a broken file
        reason = getattr(err, "reason", "unreadable NIfTI")
        summary.skip(item["image"], reason)
        summary.errors.append((item["image"], str(err) if item["image"] in str(err) else f"{item['image']}: {err}"))
        return []
    if not indices:
        summary.skip(item["image"], "no slice with foreground")
        summary.errors.append((item["image"], f"{item['image']}: no slice on axis {axis} has enough foreground"))
    return [{**item, "slice_axis": axis, "slice_index": i} for i in indices]


def index_folder(
    root: str | Path,
    classes: list[str] | None = None,
    verify: bool = True,
    summary: IndexSummary | None = None,
    nifti: dict | None = None,
) -> tuple[dict[str, list[dict]], list[str], IndexSummary]:
    """Index a class-folder tree: ``root/<class>/*`` or ``root/<split>/<class>/*``.

    NIfTI volumes become one item per slice: ``nifti={"axis": 2, "index_range": (start, stop)}`` or, without
    a range, every slice whose foreground fraction is at least ``min_foreground`` (default 0.1).

    Returns items per split found in the tree (``"all"`` when there is none), the class names and a summary.
    """
    root = Path(root)
    summary = summary or IndexSummary()
    if not root.is_dir():
        raise DatalistError(f"data directory {root} does not exist; pass an existing folder or set MEDGEN_DATA_DIR")
    subdirs = _subdirs(root)
    if len(subdirs) == 1 and _subdirs(subdirs[0]) and all(_split_folder_name(p.name) for p in _subdirs(subdirs[0])):
        logger.info("%s holds only %s, whose sub-folders are splits: indexing that", root, subdirs[0].name)
        root, subdirs = subdirs[0], _subdirs(subdirs[0])
    split_names = [p.name for p in subdirs if _split_folder_name(p.name)]
    has_splits = bool(subdirs) and len(split_names) == len(subdirs)
    if split_names and not has_splits and classes is None:
        others = [p.name for p in subdirs if p.name not in split_names]
        summary.warn(f"{root}: sub-folders {split_names} are split names but {others} are not, so all are taken "
                     "as classes; move the others out or pass --classes")
    split_roots = {_split_folder_name(p.name): p for p in subdirs} if has_splits else {"all": root}
    found = sorted({p.name for sr in split_roots.values() for p in _subdirs(sr)})
    if has_splits and not found:
        raise DatalistError(f"the split folders {split_names} under {root} hold no class folders; expected "
                            f"{root}/<split>/<class>/<images>")
    if classes is None:
        classes = found
    unknown = [c for c in classes if c not in found]
    if unknown:
        raise DatalistError(f"class folder(s) {unknown} not found under {root}; found {found}")
    if not classes:
        raise DatalistError(f"no class folders under {root}; expected {root}/<class>/<images>")
    items: dict[str, list[dict]] = {}
    for loose in sorted({p for d in (root, *split_roots.values()) for p in d.iterdir() if p.is_file()}):
        if _looks_like_image(loose, summary):
            summary.skip(loose, "image outside the class folders")
    candidates: list[tuple[str, int, Path]] = []
    for split, split_root in split_roots.items():
        items[split] = []
        for label, name in enumerate(classes):
            class_dir = split_root / name
            if class_dir.is_dir():
                candidates.extend((split, label, path) for path in sorted(p for p in class_dir.rglob("*")
                                                                          if p.is_file()))
    candidates = [c for c in candidates if _looks_like_image(c[2], summary)]
    for (split, label, path), problem in zip(candidates, _check_files([c[2] for c in candidates], verify)):
        if isinstance(problem, Exception):
            summary.skip(path, problem.reason)
            summary.errors.append((str(path), str(problem)))
            continue
        if problem is not None:
            summary.note_kind(problem, classes[label])
        item = {"image": str(path.resolve()), "label": label}
        if suffix_of(path) in (".nii", ".nii.gz"):
            items[split].extend(_nifti_items(item, nifti, summary))
        else:
            items[split].append(item)
    for label, name in enumerate(classes):
        if not any(it["label"] == label for split_items in items.values() for it in split_items):
            skipped = summary.skipped_text()
            raise DatalistError(f"class {name!r} has no readable images under {root}"
                                + (f" (skipped: {skipped})" if skipped else ""))
    return items, list(classes), summary


def index_npz(path: str | Path, classes: list[str] | None = None) -> tuple[dict[str, list[dict]], list[str]]:
    """Index a MedMNIST-style npz (``train_images``/``train_labels``, ``val_*``, ``test_*``) by its own splits."""
    path = Path(path)
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise DatalistError(f"{path} is not a readable npz file: {err}") from err
    splits = {"train": "training", "val": "validation", "test": "test"}
    items: dict[str, list[dict]] = {}
    n_classes = 0
    for prefix, split in splits.items():
        if f"{prefix}_images" not in data.files:
            continue
        labels = np.asarray(data[f"{prefix}_labels"]).reshape(len(data[f"{prefix}_labels"]), -1)[:, 0]
        n_classes = max(n_classes, int(labels.max()) + 1)
        items[split] = [
            {"image": str(path.resolve()), "npz_key": f"{prefix}_images", "npz_index": i, "label": int(lab)}
            for i, lab in enumerate(labels)
        ]
    if not items:
        raise DatalistError(f"{path} has no '<split>_images' arrays; found keys {data.files}")
    classes = classes or [str(i) for i in range(n_classes)]
    if len(classes) < n_classes:
        raise DatalistError(f"{path} has {n_classes} label values but only {len(classes)} class names: {classes}")
    return items, list(classes)


def _parse_label(raw: str, policy: str) -> int | None:
    value = raw.strip()
    if value in ("", "-1", "-1.0", "nan", "NaN"):
        return {"ignore": None, "zeros": 0, "ones": 1, "soft": 1}[policy]
    return int(float(value))


def index_csv(
    path: str | Path,
    image_column: str | None = "path",
    label_column: str | None = "label",
    classes: list[str] | None = None,
    uncertain: str = "ignore",
    root: str | Path | None = None,
    summary: IndexSummary | None = None,
    views: str | None = "frontal",
    verify: bool = False,
) -> tuple[dict[str, list[dict]], list[str], IndexSummary]:
    """Index a CSV of image paths and labels.

    CheXpert's own CSV (a ``Path`` and a ``Frontal/Lateral`` column) is recognised by its header and indexed
    by :func:`medgen.data.chexpert.index_chexpert` with CheXpert's label semantics, ``views`` and ``root``.
    Any other CSV: labels are class names or integers; binary columns (1 positive, 0 negative, -1 or blank
    unknown) are mapped by ``uncertain``: ``ignore`` drops the row, ``zeros``/``ones`` map it to 0/1, ``soft``
    maps it to 1 and keeps ``soft_label`` 0.5 in the item. A ``split`` column, when present, is kept.
    Raises :class:`DatalistError` when no row is usable, with the rows read and the drops by reason.
    """
    from medgen.data.chexpert import index_chexpert, is_chexpert_header

    path = Path(path)
    summary = summary or IndexSummary()
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatalistError(f"uncertain label policy {uncertain!r} is not one of {UNCERTAIN_POLICIES}")
    if not path.is_file():
        raise DatalistError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = list(reader.fieldnames or [])
        if is_chexpert_header(fieldnames) and image_column in (None, "path", "Path"):
            return index_chexpert(path, root, None if label_column == "label" else label_column, classes,
                                  uncertain, views, verify, summary)
        image_column, label_column = image_column or "path", label_column or "label"
        missing = [c for c in (image_column, label_column) if c not in fieldnames]
        if missing:
            raise DatalistError(f"{path} has no column(s) {missing}; columns are {fieldnames} "
                                "(name them with --image-column / --label-column)")
        rows = list(reader)
    base = Path(root) if root else path.parent
    raw_labels = [r[label_column].strip() for r in rows]
    numeric = all(_is_number(v) or v == "" for v in raw_labels)
    if classes is None:
        classes = ["negative", "positive"] if numeric else sorted({v for v in raw_labels if v})
    items: dict[str, list[dict]] = defaultdict(list)
    for row_no, row in enumerate(rows, start=2):
        raw = row[label_column]
        if numeric:
            label = _parse_label(raw, uncertain)
            if label is None:
                summary.skip(f"{path}:{row_no}", "uncertain label")
                continue
        elif raw.strip() in classes:
            label = classes.index(raw.strip())
        else:
            summary.skip(f"{path}:{row_no}", "unknown class")
            summary.errors.append((f"{path}:{row_no}", f"label {raw!r} is not one of {classes}"))
            continue
        if label >= len(classes):
            raise DatalistError(f"{path}:{row_no}: label {label} but only classes {classes}")
        image = Path(row[image_column])
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            summary.skip(image, "missing file")
            summary.errors.append((f"{path}:{row_no}", f"image {image} does not exist"))
            continue
        if not (_looks_like_image(image, summary) and _readable(image, summary, verify)):
            continue
        split = SPLIT_ALIASES.get(row.get("split", "").strip().lower(), "all")
        item = {"image": str(image.resolve()), "label": label}
        if uncertain == "soft" and numeric:
            item["soft_label"] = 0.5 if raw.strip() in ("", "-1", "-1.0", "nan", "NaN") else float(label)
        items[split].append(item)
    if not any(items.values()):
        why = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.most_common()) or "the file has no rows"
        raise DatalistError(f"{path}: no usable row among {len(rows)} rows read (dropped: {why}); image paths are "
                            f"relative to {base} (set --root)")
    return dict(items), list(classes), summary


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def finalize_splits(
    items: dict[str, list[dict]], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[dict]]:
    """Fill in missing splits: stratified validation (and test) carved out of the training/unsplit items."""
    out = {k: list(v) for k, v in items.items() if k != "all"}
    pool = items.get("all", []) + out.pop("training", [])
    fractions = {}
    if "validation" not in out and val_fraction > 0:
        fractions["validation"] = val_fraction
    if "test" not in out and test_fraction > 0:
        fractions["test"] = test_fraction
    fractions["training"] = max(0.0, 1.0 - sum(fractions.values()))
    out.update(stratified_split(pool, fractions, seed=seed))
    for split in ("training", "validation", "test"):
        out.setdefault(split, [])
    return out


def build_datalist(
    source: str | Path,
    classes: list[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    image_column: str = "path",
    label_column: str = "label",
    uncertain: str = "ignore",
    verify: bool = True,
    nifti: dict | None = None,
    root: str | Path | None = None,
    views: str | None = "frontal",
    channels: int | None = None,
    include_synthetic: bool = False,
) -> tuple[dict[str, Any], IndexSummary]:
    """Build a MONAI datalist dict from a folder tree, an npz, a CSV or a DICOM tree.

    ``root`` (image paths of a CSV are relative to it) and ``views`` apply to CSVs (see :func:`index_csv`).
    A folder without its own splits gets stratified ``validation`` and ``test`` splits of ``val_fraction`` and
    ``test_fraction`` of every class, drawn from ``seed``. ``channels`` (1 grey, 3 RGB; None: not known) is the
    model's: what reading does with files of the other kind is logged with counts
    (:meth:`IndexSummary.decide_channels`).
    """
    source = Path(source)
    summary = IndexSummary(include_synthetic=include_synthetic)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatalistError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must each be in [0, 1) "
                            "and leave a training share (their sum below 1)")
    if not source.exists():
        raise DatalistError(f"data source {source} does not exist; pass a folder, .npz or .csv, or set MEDGEN_DATA_DIR")
    if source.suffix.lower() == ".npz":
        items, classes = index_npz(source, classes)
    elif source.suffix.lower() == ".csv":
        items, classes, summary = index_csv(source, image_column, label_column, classes, uncertain, root=root,
                                            summary=summary, views=views, verify=verify)
    elif source.is_dir() and _is_dicom_tree(source):
        items, classes = _index_dicom(source, classes, summary, verify)
    else:
        items, classes, summary = index_folder(source, classes, verify=verify, summary=summary, nifti=nifti)
    _mark_synthetic(items, summary)
    summary.decide_channels(channels)
    if len(classes) == 1:
        summary.warn(f"{source}: only one class ({classes[0]!r}); a class-conditional model then has nothing to "
                     "tell apart - point at the folder that holds one sub-folder per class, or pass --classes")
    datalist: dict[str, Any] = {"classes": classes, "source": str(source.resolve()), "seed": seed}
    datalist.update(finalize_splits(items, val_fraction, test_fraction, seed))
    return datalist, summary


def _is_dicom_tree(root: Path) -> bool:
    """A tree is DICOM when its first few files are DICOM (with or without extension)."""
    try:
        from medgen.data.dicom import is_dicom
    except ImportError:
        return False
    files = [p for p in sorted(root.rglob("*"))[:200] if p.is_file() and p.name.lower() not in JUNK_NAMES]
    return bool(files) and sum(is_dicom(p) for p in files[:20]) > len(files[:20]) // 2


def _index_dicom(root: Path, classes: list[str] | None, summary: IndexSummary, verify: bool = True):
    from medgen.data.dicom_index import index_dicom_tree

    found, dicom_summary = index_dicom_tree(root)
    for reason, count in dicom_summary.get("skipped", {}).items():
        summary.skipped[reason if reason in ("hidden", "dicomdir") else f"DICOM {reason.replace('_', ' ')}"] += count
    summary.errors.extend(dicom_summary.get("errors", []))
    found = [it for it in found if not _synthetic(Path(it["image"]), summary)
             and _readable(Path(it["image"]), summary, verify)]
    names = sorted({it["label_name"] for it in found})
    if not names:
        raise DatalistError(f"no usable image in the DICOM tree {root} (skipped: {summary.skipped_text() or 'none'})")
    classes = classes or names
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise DatalistError(f"class(es) {unknown} not found in DICOM tree {root}; found {names}")
    items = [{"image": it["image"], "label": classes.index(it["label_name"])}
             for it in found if it["label_name"] in classes]
    return {"all": items}, classes


def summary_table(datalist: dict[str, Any], summary: IndexSummary | None = None) -> str:
    """Images per class per split, and what was skipped, as printable text."""
    classes = datalist["classes"]
    splits = [s for s in ("training", "validation", "test") if s in datalist]
    width = max(12, *(len(c) + 2 for c in classes))
    lines = ["class".ljust(width) + "".join(s.rjust(12) for s in splits)]
    for label, name in enumerate(classes):
        counts = [sum(1 for it in datalist[s] if it["label"] == label) for s in splits]
        lines.append(name.ljust(width) + "".join(str(c).rjust(12) for c in counts))
    lines.append("total".ljust(width) + "".join(str(len(datalist[s])).rjust(12) for s in splits))
    if summary is not None:
        skipped = sum(summary.skipped.values())
        detail = summary.skipped_text()
        lines.append(f"skipped {skipped} file(s)" + (f": {detail}" if detail else ""))
        if summary.synthetic:
            lines.append(f"kept {len(summary.synthetic)} synthetic image(s), marked \"synthetic\": true "
                         "(--include-synthetic): a datalist for a classifier, not for training a generative model")
        lines.extend(f"converted on reading: {n} {what}" for what, n in sorted(summary.converted.items()))
        lines.extend(f"warning: {message}" for message in summary.warnings)
        for path, message in summary.errors[:10]:
            lines.append(f"  {message}" if message.startswith(path) else f"  {path}: {message}")
        if len(summary.errors) > 10:
            lines.append(f"  ... and {len(summary.errors) - 10} more")
    return "\n".join(lines)


def write_datalist(datalist: dict[str, Any], out: str | Path) -> Path:
    """Write the datalist JSON atomically (temporary file, fsync, rename); never an empty one.

    Raises :class:`DatalistError`, writing nothing, when the datalist has no training image.
    """
    out = Path(out)
    counts = {split: len(datalist.get(split) or []) for split in ("training", "validation", "test")}
    if not counts["training"]:
        raise DatalistError(f"not writing {out}: the datalist from {datalist.get('source', 'its source')} has no "
                            f"training image ({counts['validation']} validation, {counts['test']} test); "
                            "lower --val-fraction / --test-fraction or check the source")
    from medgen.fileio import write_text_atomic

    return write_text_atomic(json.dumps(datalist, indent=1), out)


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Read a datalist written by :func:`write_datalist` (or any MONAI datalist with a ``classes`` key)."""
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"datalist {path} does not exist; create it with `medgen data index SOURCE --out {path}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatalistError(f"datalist {path} is not valid JSON: {err}") from err
    if "training" not in data:
        raise DatalistError(f"datalist {path} has no 'training' list")
    return data


def limit_per_class(items: list[dict], max_items: int | None, seed: int = 0) -> list[dict]:
    """At most ``max_items`` items per label, chosen reproducibly (for brief runs and tests)."""
    if not max_items:
        return items
    picked = stratified_split(items, {"keep": 1.0}, seed=seed)["keep"]
    counts: Counter = Counter()
    out = []
    rng = random.Random(seed)
    shuffled = list(picked)
    rng.shuffle(shuffled)
    for item in shuffled:
        if counts[item["label"]] < max_items:
            counts[item["label"]] += 1
            out.append(item)
    return sorted(out, key=lambda d: (d["label"], str(d["image"]), d.get("npz_index", 0)))


def resolve_datalist(
    source: str | Path,
    classes: list[str] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    max_items_per_class: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    channels: int | None = None,
) -> dict[str, Any]:
    """The datalist a bundle trains on: read ``source`` if it is a datalist JSON, else index it (and write it
    to ``out``). Class names given must match the data's; ``max_items_per_class`` trims every split. A folder
    without splits is split by class into ``val_fraction`` / ``test_fraction`` / the rest from ``seed``;
    ``channels`` is the model's (see :func:`build_datalist`)."""
    source = Path(source)
    if source.suffix.lower() == ".json":
        datalist = load_datalist(source)
        synthetic = synthetic_items(datalist)
        if synthetic:
            raise DatalistError(f"datalist {source} holds {len(synthetic)} synthetic image(s) (\"synthetic\": true, "
                                f"e.g. {synthetic[0].get('image')}): a generative model trains on real images only; "
                                "index the real images alone (medgen data index without --include-synthetic)")
        unmarked = _first_synthetic(datalist)
        if unmarked:
            raise DatalistError(f"datalist {source} names {unmarked[0]}, a {unmarked[1]}: a generative model trains on "
                                "real images only; take the synthetic images out of it (medgen data index leaves "
                                "them out)")
        if classes is not None and list(classes) != list(datalist.get("classes", classes)):
            raise DatalistError(f"datalist {source} has classes {datalist.get('classes')}, config asks for {classes}")
        summary = None
        if len(datalist.get("classes", [])) == 1:
            logger.warning("datalist %s has only one class (%r): the class label carries nothing", source,
                           datalist["classes"][0])
    else:
        datalist, summary = build_datalist(source, classes, val_fraction, test_fraction, seed, channels=channels)
    if max_items_per_class:
        for split in ("training", "validation", "test"):
            if split in datalist:
                datalist[split] = limit_per_class(datalist[split], max_items_per_class, seed)
    logger.info("datalist from %s:\n%s", source, summary_table(datalist, summary))
    if out is not None:
        write_datalist(datalist, out)
    return datalist
