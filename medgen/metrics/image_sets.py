"""Image sets for evaluation: datalist items, image folders and samples folders as N x 1 x H x W float32 in [0, 1].

A small, self-contained loader (PIL + torch antialiased resize) so that the metrics do not depend on the training
data pipeline. Every set carries a fingerprint (file list + mtimes + size) that keys the on-disk feature cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medgen.metrics.errors import ImageSetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class ImageSet:
    """Grey images ``images`` (N x 1 x H x W, float32, [0, 1]) with integer ``labels`` indexing ``classes``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: list[str] = field(default_factory=list)
    fingerprint: str = ""
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = to_common_form(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.images):
            raise ImageSetError(f"{len(self.images)} images but {len(self.labels)} labels.")
        if not self.ids:
            self.ids = [f"mem:{i}" for i in range(len(self.images))]
        if not self.fingerprint:
            self.fingerprint = hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()[:32]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``index`` (fingerprint derived from the parent's and the index)."""
        index = np.asarray(index, dtype=np.int64)
        key = hashlib.sha256(self.fingerprint.encode() + index.tobytes()).hexdigest()[:32]
        return ImageSet(
            self.images[index],
            self.labels[index],
            list(self.classes),
            [self.ids[i] for i in index],
            key,
            [self.records[i] for i in index] if self.records else [],
        )

    def of_class(self, label: int) -> ImageSet:
        return self.subset(np.flatnonzero(self.labels == label))


def to_common_form(images: np.ndarray | torch.Tensor, size: int | None = None) -> np.ndarray:
    """Bring images to N x 1 x H x W float32 in [0, 1], optionally resized to ``size`` x ``size``.

    Accepts N x H x W, N x C x H x W with C in (1, 3, 4) (RGB averaged to grey, alpha dropped), uint8 (0..255) or float
    in [0, 1] / [-1, 1] (detected by a negative minimum). Anything else is refused with a message saying what was seen.
    """
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ImageSetError(f"expected images as N x C x H x W (or N x H x W), got shape {tuple(x.shape)}.")
    if x.shape[1] not in (1, 3, 4):
        raise ImageSetError(f"expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {x.shape[1]} (shape {x.shape}).")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32, copy=False)
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] == 3:
        x = x.mean(axis=1, keepdims=True)
    if x.size and float(x.min()) < -1e-6:
        x = (x + 1.0) / 2.0
    x = np.clip(x, 0.0, 1.0)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = resize(x, size)
    return x


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of N x 1 x H x W images to ``size`` x ``size``."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp_(0.0, 1.0).numpy()


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image file as 1 x size x size float32 grey in [0, 1]."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if im.mode != "I;16" else "I"), dtype=np.float32)
    except Exception as e:  # PIL raises many types
        raise ImageSetError(f"cannot read image {path}: {e}") from e
    arr = arr / (65535.0 if arr.max() > 255 else 255.0)
    return resize(arr[None, None], size)[0]


def _stat_key(path: str, extra: str = "") -> str:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise ImageSetError(f"image file not found: {path}") from e
    return f"{os.path.abspath(path)}|{extra}|{mtime}"


def _fingerprint(keys: Sequence[str], size: int) -> str:
    h = hashlib.sha256(f"size={size}\n".encode())
    for k in keys:
        h.update(k.encode() + b"\n")
    return h.hexdigest()[:32]


def load_items(items: Sequence[dict], classes: Sequence[str], size: int = 64, root: str | None = None) -> ImageSet:
    """Load MONAI datalist items (``{"image": path, "label": int}``; npz items add ``npz_key`` and ``npz_index``)."""
    images, labels, ids, keys = [], [], [], []
    npz_cache: dict[str, np.lib.npyio.NpzFile] = {}
    for item in items:
        path = str(item["image"])
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        if "npz_key" in item:
            npz = npz_cache.setdefault(path, np.load(path))
            arr = np.asarray(npz[item["npz_key"]][int(item["npz_index"])])
            img = to_common_form(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)[None], size)[0]
            extra = f"{item['npz_key']}:{item['npz_index']}"
        else:
            img, extra = load_image(path, size), ""
        images.append(img)
        labels.append(int(item.get("label", 0)))
        ids.append(f"{path}:{extra}" if extra else path)
        keys.append(_stat_key(path, extra))
    if not images:
        raise ImageSetError("no images in the given datalist items.")
    return ImageSet(np.stack(images), np.asarray(labels), list(classes), ids, _fingerprint(keys, size))


def read_datalist(path: str | os.PathLike) -> dict:
    """Read a MONAI datalist JSON (with a ``classes`` list)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ImageSetError(f"cannot read datalist {path}: {e}") from e
    if "classes" not in data:
        labels = sorted({int(i.get("label", 0)) for k in ("training", "validation", "test") for i in data.get(k, [])})
        data["classes"] = [str(v) for v in range(max(labels, default=0) + 1)]
    return data


def load_datalist_split(
    datalist: str | os.PathLike | dict,
    split: str | Sequence[str],
    size: int = 64,
    per_class: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """Load one split (or several, concatenated) of a datalist; ``per_class`` draws at most that many per class."""
    data = datalist if isinstance(datalist, dict) else read_datalist(datalist)
    root = None if isinstance(datalist, dict) else os.path.dirname(os.path.abspath(datalist))
    splits = [split] if isinstance(split, str) else list(split)
    items = [i for s in splits for i in data.get(s, [])]
    if not items:
        raise ImageSetError(
            f"datalist has no items in split(s) {splits}; it has {sorted(k for k in data if k != 'classes')}."
        )
    if per_class is not None:
        rng = np.random.default_rng(seed)
        chosen = []
        for label in sorted({int(i.get("label", 0)) for i in items}):
            idx = [j for j, i in enumerate(items) if int(i.get("label", 0)) == label]
            chosen += sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist())
        items = [items[j] for j in sorted(chosen)]
    return load_items(items, data["classes"], size=size, root=root)


def load_folder(folder: str | os.PathLike, size: int = 64, classes: Sequence[str] | None = None) -> ImageSet:
    """Load a folder of images; sub-folder names are the classes (images directly inside get class 0)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ImageSetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    names = sorted({p.parent.name for p in files if p.parent != folder})
    classes = list(classes) if classes is not None else (names or ["0"])
    items = []
    for p in files:
        name = p.parent.name if p.parent != folder else classes[0]
        if name not in classes:
            raise ImageSetError(f"{p}: folder {name!r} is not one of the classes {classes}")
        items.append({"image": str(p), "label": classes.index(name)})
    return load_items(items, classes, size=size)


def load_samples_dir(folder: str | os.PathLike, size: int = 64, classes: Sequence[str] | None = None) -> ImageSet:
    """Load a samples folder (``samples.jsonl`` + 8-bit PNGs); without ``samples.jsonl`` falls back to the folder."""
    folder = Path(folder)
    meta = folder / "samples.jsonl"
    if not meta.is_file():
        return load_folder(folder, size, classes)
    records = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    if not records:
        raise ImageSetError(f"{meta} lists no samples.")
    if classes is None:
        by_label = {int(r["label"]): r.get("class", str(r["label"])) for r in records}
        classes = [by_label.get(i, str(i)) for i in range(max(by_label) + 1)]
    items = [{"image": str(folder / r["file"]), "label": int(r["label"])} for r in records]
    out = load_items(items, classes, size=size)
    out.records = records
    return out


def load_image_set(source: str | os.PathLike, size: int = 64, split: str = "test", **kw) -> ImageSet:
    """A datalist JSON (its ``split``), a samples folder or an image folder, whichever ``source`` is."""
    if str(source).endswith(".json"):
        return load_datalist_split(source, split, size=size, **kw)
    return load_samples_dir(source, size=size)


def write_samples_dir(
    folder: str | os.PathLike,
    images: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    seeds: Sequence[int] | None = None,
    extra: dict | Sequence[dict] | None = None,
) -> Path:
    """Write images (any form :func:`to_common_form` accepts) as 8-bit grey PNGs plus ``samples.jsonl``."""
    folder = Path(folder)
    x = to_common_form(images)
    seeds = list(range(len(x))) if seeds is None else list(seeds)
    now = datetime.now(timezone.utc).isoformat()
    lines = []
    for i, (img, label) in enumerate(zip(x, labels)):
        name = classes[int(label)]
        rel = f"{name}/{i:06d}_s{seeds[i]}.png"
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(folder / rel)
        rec = {"file": rel, "class": name, "label": int(label), "seed": int(seeds[i]), "timestamp": now}
        more = extra[i] if isinstance(extra, Sequence) else extra
        rec.update(more or {})
        lines.append(json.dumps(rec))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def datalist_from_class_folders(
    splits: dict[str, str | os.PathLike], per_class: int | None = None, seed: int = 0
) -> dict:
    """A datalist from ``{split: folder with one sub-folder per class}`` (e.g. Kermany ``train/NORMAL``)."""
    rng = np.random.default_rng(seed)
    classes = sorted({p.name for f in splits.values() for p in Path(f).iterdir() if p.is_dir()})
    data: dict = {"classes": classes}
    for split, folder in splits.items():
        items = []
        for label, name in enumerate(classes):
            files = sorted(
                str(p.resolve())
                for p in (Path(folder) / name).glob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if per_class is not None and len(files) > per_class:
                files = sorted(rng.choice(files, per_class, replace=False).tolist())
            items += [{"image": f, "label": label} for f in files]
        data[split] = items
    return data
