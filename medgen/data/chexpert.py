"""Index CheXpert's own ``train.csv`` / ``valid.csv`` (Irvin et al., AAAI 2019) as distributed.

The CSV's header is ``Path, Sex, Age, Frontal/Lateral, AP/PA`` followed by the 14 observation columns; ``Path``
starts with the data set's folder name (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``).
``--root`` may be the folder that *contains* ``CheXpert-v1.0-small/`` or that folder itself: the layout is
decided once from the tree, so a path is never doubled.

Label semantics are CheXpert's: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank = not mentioned =
negative. Uncertain values follow a policy:

- ``ignore``: drop the row (U-Ignore),
- ``zeros`` / ``ones``: count it as negative / positive (U-Zeros / U-Ones),
- ``soft``: the training ``label`` stays hard and follows ``ones``, and each item also carries ``soft_label``,
  the label as a probability (1, 0 or 0.5 for uncertain) for metrics that take soft targets: a float (the
  positive class) for one label column, a list with one value per class for several.

Classes come from one column (``label_column="Pneumonia"`` gives ``negative``/``positive``, or the two names
given) or from several (``classes=["Pneumonia", "Pneumothorax", "No Finding"]``): a row belongs to the one
class whose column is positive; a row positive in more than one, or in none, is dropped and counted.

Python's ``csv`` module reads the file; this module adds only what CheXpert's layout and label conventions need.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path, PurePosixPath

from medgen.data.datalist import SPLIT_ALIASES, DatalistError, IndexSummary, _looks_like_image, _readable

PATH_COLUMN = "Path"
VIEW_COLUMN = "Frontal/Lateral"
PROJECTION_COLUMN = "AP/PA"
META_COLUMNS = (PATH_COLUMN, "Sex", "Age", VIEW_COLUMN, PROJECTION_COLUMN)
OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
POLICIES = ("ignore", "zeros", "ones", "soft")
VIEW_KINDS = ("frontal", "lateral")
PROJECTIONS = ("AP", "PA", "LL", "RL")


def is_chexpert_header(fieldnames: list[str] | None) -> bool:
    """CheXpert's layout: a ``Path`` and a ``Frontal/Lateral`` column."""
    return bool(fieldnames) and PATH_COLUMN in fieldnames and VIEW_COLUMN in fieldnames


def parse_views(views: str | None) -> tuple[set[str], set[str]]:
    """``frontal`` (default), ``frontal,lateral``, ``all``, or projections ``PA,AP`` (mixable with ``lateral``).

    Returns the view kinds kept whole and the projections kept; a row is kept when either matches.
    """
    tokens = [t.strip() for t in (views or "frontal").split(",") if t.strip()]
    kinds: set[str] = set()
    projections: set[str] = set()
    for token in tokens:
        if token.lower() == "all":
            kinds.update(VIEW_KINDS)
        elif token.lower() in VIEW_KINDS:
            kinds.add(token.lower())
        elif token.upper() in PROJECTIONS:
            projections.add(token.upper())
        else:
            raise DatalistError(f"--views {views!r}: {token!r} is not one of frontal, lateral, all, "
                                f"{', '.join(PROJECTIONS)} (e.g. --views frontal or --views PA,AP)")
    if not kinds and not projections:
        raise DatalistError(f"--views {views!r} selects no view; use frontal, lateral, all or PA,AP")
    return kinds, projections


def label_value(raw: str | None, where: str, column: str) -> float:
    """CheXpert's value of one observation: 1, 0, -1 (uncertain); blank (not mentioned) reads as 0."""
    value = (raw or "").strip()
    if value == "":
        return 0.0
    try:
        number = float(value)
    except ValueError:
        number = None
    if number not in (1.0, 0.0, -1.0):
        raise DatalistError(f"{where}: column {column!r} has {value!r}; CheXpert labels are 1, 0, -1 or blank")
    return number


def _apply_policy(value: float, policy: str) -> tuple[int | None, float]:
    """(hard label or None to drop, soft value) of one observation under an uncertain policy."""
    if value != -1.0:
        return int(value), value
    hard = {"ignore": None, "zeros": 0, "ones": 1, "soft": 1}[policy]
    return hard, (0.5 if policy == "soft" else float(hard or 0))


def _strip_prefix(root: Path, first_path: str) -> bool:
    """Whether the leading folder name of ``Path`` values is to be stripped to join them to ``root``.

    ``root/CheXpert-v1.0-small`` exists: join as is; otherwise ``root`` is taken to be that folder itself
    (whatever it is called now) and the leading component is dropped, so paths are never doubled.
    """
    prefix = PurePosixPath(first_path.replace("\\", "/")).parts[0]
    return not (root / prefix).is_dir()


def _resolve(base: str, raw: str, strip: bool) -> str:
    """Absolute image path of a ``Path`` value under the (already resolved) ``base``; string work only, as a
    CheXpert CSV has ~220k rows."""
    rel = raw.strip().replace("\\", "/")
    if strip and not rel.startswith("/") and "/" in rel:
        rel = rel.split("/", 1)[1]
    return os.path.normpath(os.path.join(base, rel))


def _class_columns(
    fieldnames: list[str], label_column: str | None, classes: list[str] | None, path: Path
) -> tuple[list[str], list[str]]:
    """(label columns read, class names). One column: 2 classes; several: one class per column."""
    label_columns = [c for c in fieldnames if c not in META_COLUMNS]
    if label_column:
        if label_column not in label_columns:
            raise DatalistError(f"{path} has no label column {label_column!r}; label columns are {label_columns}")
        names = list(classes) if classes else ["negative", "positive"]
        if len(names) != 2:
            raise DatalistError(f"--label-column {label_column} makes 2 classes (negative, positive) but --classes "
                                f"names {len(names)}: {names}; give 2 names or use --classes with column names only")
        return [label_column], names
    if not classes:
        raise DatalistError(f"{path} is a CheXpert CSV: choose the classes with --label-column <column> (negative/"
                            f"positive) or --classes 'A,B,...' (one column per class); label columns are "
                            f"{label_columns}")
    unknown = [c for c in classes if c not in label_columns]
    if unknown:
        raise DatalistError(f"--classes {unknown} are not label columns of {path}; label columns are {label_columns}"
                            " (for two named classes of one column use --label-column <column> --classes neg,pos)")
    if len(set(classes)) != len(classes):
        raise DatalistError(f"--classes {classes} names a column twice")
    return list(classes), list(classes)


def index_chexpert(
    path: str | Path,
    root: str | Path | None = None,
    label_column: str | None = None,
    classes: list[str] | None = None,
    uncertain: str = "ignore",
    views: str | None = "frontal",
    verify: bool = False,
    summary: IndexSummary | None = None,
) -> tuple[dict[str, list[dict]], list[str], IndexSummary]:
    """Index a CheXpert CSV: items per split (``"all"`` unless the CSV mixes ``train/`` and ``valid/`` paths),
    the class names and a summary counting every dropped row by reason.

    ``root`` defaults to the CSV's folder (where CheXpert ships it). Raises :class:`DatalistError` when no row is
    usable or a class has no image, naming the file, the rows read and why each was dropped.
    """
    path = Path(path)
    summary = summary or IndexSummary()
    if uncertain not in POLICIES:
        raise DatalistError(f"uncertain label policy {uncertain!r} is not one of {POLICIES}")
    kinds, projections = parse_views(views)
    root = Path(root) if root else path.parent
    if not root.is_dir():
        raise DatalistError(f"--root {root} is not a folder; pass the folder that contains CheXpert-v1.0-small/ "
                            "or that folder itself")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = list(reader.fieldnames or [])
        rows = list(reader)
    columns, names = _class_columns(fieldnames, label_column, classes, path)
    strip = _strip_prefix(root, rows[0][PATH_COLUMN]) if rows else False
    base = str(root.resolve())
    found: list[tuple[str, dict]] = []
    first_missing = None
    for row_no, row in enumerate(rows, start=2):
        where = f"{path}:{row_no}"
        view = (row.get(VIEW_COLUMN) or "").strip()
        projection = (row.get(PROJECTION_COLUMN) or "").strip().upper()
        if view.lower() not in kinds and projection not in projections:
            if projections and view.lower() == "frontal":
                reason = f"{projection or 'no AP/PA'} projection"
            else:
                reason = f"{view.lower() or 'unknown'} view"
            summary.skip(where, f"{reason} not selected (--views)")
            continue
        hard, soft = zip(*(_apply_policy(label_value(row.get(c), where, c), uncertain) for c in columns))
        if any(h is None for h in hard):
            summary.skip(where, "uncertain label (--uncertain ignore)")
            continue
        if len(columns) == 1:
            label, soft_label = hard[0], soft[0]
        else:
            positive = [i for i, h in enumerate(hard) if h == 1]
            if len(positive) != 1:
                summary.skip(where, "unlabelled: positive in none of the classes" if not positive else
                             "ambiguous: positive in several classes")
                continue
            label, soft_label = positive[0], list(soft)
        image = _resolve(base, row[PATH_COLUMN], strip)
        if not os.path.isfile(image):
            summary.skip(where, "missing file")
            summary.errors.append((where, f"image {image} does not exist"))
            first_missing = first_missing or image
            continue
        if not (_looks_like_image(Path(image), summary) and _readable(Path(image), summary, verify)):
            continue
        item = {"image": image, "label": label}
        if uncertain == "soft":
            item["soft_label"] = soft_label
        parts = PurePosixPath(row[PATH_COLUMN].strip().replace("\\", "/")).parts
        found.append((SPLIT_ALIASES.get(parts[1].lower(), "all") if len(parts) > 2 else "all", item))
    splits = Counter(split for split, _ in found)
    items: dict[str, list[dict]] = {}
    for split, item in found:
        items.setdefault(split if len(splits) > 1 else "all", []).append(item)
    _check_not_empty(path, len(rows), found, names, summary, first_missing, root)
    return items, names, summary


def _check_not_empty(path: Path, n_rows: int, found: list, names: list[str], summary: IndexSummary,
                     first_missing: Path | None, root: Path) -> None:
    """One-line error when nothing (or nothing for some class) is left: the file, rows read, drops by reason."""
    counts = Counter(item["label"] for _, item in found)
    empty = [name for i, name in enumerate(names) if not counts[i]]
    if not empty:
        return
    why = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.most_common()) or "the file has no rows"
    hint = (f"; first missing image {first_missing}: --root must be the folder that contains CheXpert-v1.0-small/ "
            f"or that folder itself (was {root})") if first_missing else ""
    what = "no usable row" if not found else f"no image for class(es) {empty} ({len(found)} rows kept)"
    raise DatalistError(f"{path}: {what} among {n_rows} rows read (dropped: {why}){hint}")
