"""Image sets for evaluation: datalist items, image folders and samples folders as N x C x H x W float32 in [0, 1].

C is 1 (grey) or 3 (RGB): a set knows its channels. They come from the caller (the weights' metadata ``channels``),
else from the files: each image counts as colour when its channels differ (an RGB file holding grey pixels is grey),
and the majority decides. A set that mixes grey and colour images is brought to its mode (grey repeated to RGB,
colour to ITU-R 601 luma, as training's loader does) with one logged line giving the counts.

Real images (datalist items, image folders) are read exactly as training reads them: the training pipeline
:func:`medgen.data.transforms.diffusion_transforms` (``LoadMedicalImage``: PIL modes, EXIF, 16-bit, DICOM windowing,
NIfTI slices, npz/npy items; the same ``resize_mode``), without the random flip and mapped back to [0, 1]. An item
that fails to load is skipped with a one-line warning naming the file and counted by reason (``ImageSet.skipped``),
as training's ``SkipFailedCacheDataset`` does. Samples folders (8-bit PNGs that ``medgen sample`` writes) are read
with PIL. Every set carries a fingerprint (file list + mtimes + size + preprocessing) that keys the on-disk feature
cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medgen.metrics.errors import ImageSetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Changes whenever real images are prepared differently, so features cached for the old preparation are not reused.
REAL_PREPARATION = "training-pipeline-1"


@dataclass
class ImageSet:
    """Images ``images`` (N x C x H x W, float32, [0, 1]; C = 1 grey or 3 RGB) with ``labels`` indexing ``classes``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: list[str] = field(default_factory=list)
    fingerprint: str = ""
    records: list[dict] = field(default_factory=list)
    #: items that failed to load and were left out, by reason; ``failures`` holds ``(path, message)``
    skipped: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)

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

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (RGB)."""
        return int(self.images.shape[1])

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


def to_common_form(
    images: np.ndarray | torch.Tensor, size: int | None = None, channels: int | None = None
) -> np.ndarray:
    """Bring images to N x C x H x W float32 in [0, 1], optionally resized to ``size`` x ``size``.

    Accepts N x H x W, N x C x H x W with C in (1, 3, 4) (alpha dropped), uint8 (0..255) or float in [0, 1] /
    [-1, 1] (detected by a negative minimum). ``channels``: None keeps grey grey and RGB RGB; 1 averages RGB to grey;
    3 repeats grey to RGB. Anything else is refused with a message saying what was seen.
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
    if x.shape[1] == 3 and channels == 1:
        x = x.mean(axis=1, keepdims=True)
    elif x.shape[1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=1)
    if x.size and float(x.min()) < -1e-6:
        x = (x + 1.0) / 2.0
    x = np.clip(x, 0.0, 1.0)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = resize(x, size)
    return x


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of N x C x H x W images to ``size`` x ``size``."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp_(0.0, 1.0).numpy()


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
#: mean spread between an image's channels (of [0, 1]) above which it counts as colour; JPEG chroma noise on grey
#: content stays far below it, stained cells and colour photographs far above
COLOUR_SPREAD = 0.01


def load_image(path: str | os.PathLike, size: int, channels: int | None = 1) -> np.ndarray:
    """One 8-bit (or 16-bit) image file, e.g. a generated sample, as C x size x size float32 in [0, 1].

    ``channels``: 1 grey (as always), 3 RGB (grey repeated), None the file's own (RGB for a colour mode)."""
    try:
        with Image.open(path) as im:
            if channels == 3 or (channels is None and im.mode not in GREY_MODES):
                arr = np.moveaxis(np.asarray(im.convert("RGB"), dtype=np.float32), -1, 0)
            else:
                arr = np.asarray(im.convert("L" if im.mode != "I;16" else "I"), dtype=np.float32)[None]
    except Exception as e:  # PIL raises many types
        raise ImageSetError(f"cannot read image {path}: {e}") from e
    arr = arr / (65535.0 if arr.max() > 255 else 255.0)
    return resize(arr[None], size)[0]


def is_colour(image: np.ndarray) -> bool:
    """Whether a C x H x W image in [0, 1] has colour content (3 channels that differ, see :data:`COLOUR_SPREAD`)."""
    if image.shape[0] != 3:
        return False
    return float((image.max(axis=0) - image.min(axis=0)).mean()) > COLOUR_SPREAD


def settle_channels(images: Sequence[np.ndarray], channels: int | None = None, what: str = "image set") -> np.ndarray:
    """Stack C x H x W images (C 1 or 3) in one mode: ``channels``, else the majority's (colour on a tie).

    Grey images in a colour set are repeated to RGB; colour images in a grey set become ITU-R 601 luma (training's
    conversion); RGB images with grey content become grey exactly (their first channel). A set that mixes grey and
    colour content gets one log line with the counts and the decision."""
    colour = [is_colour(im) for im in images]
    n_colour = sum(colour)
    n_grey = len(images) - n_colour
    if channels is None:
        channels = 3 if n_colour and n_colour >= n_grey else 1
    if channels not in (1, 3):
        raise ImageSetError(f"{what}: channels must be 1 (grey) or 3 (RGB), got {channels}")
    out = []
    for im, c in zip(images, colour):
        if channels == 3 and im.shape[0] == 1:
            im = np.repeat(im, 3, axis=0)
        elif channels == 1 and im.shape[0] == 3:
            im = (0.299 * im[0] + 0.587 * im[1] + 0.114 * im[2])[None] if c else im[:1]
        out.append(np.asarray(im, dtype=np.float32))
    if n_colour and n_grey:
        moved, kept = (n_grey, "grey images repeated to RGB") if channels == 3 else (n_colour, "colour images "
                                                                                      "converted to grey (luma)")
        logger.warning("%s mixes %d colour and %d grey images: the set is %s, %d %s", what, n_colour, n_grey,
                       "colour (3 channels)" if channels == 3 else "grey (1 channel)", moved, kept)
    return np.stack(out)


def channels_of(meta: dict | None) -> int | None:
    """``channels`` recorded in the weights' metadata, else None (decided from the files)."""
    from medgen.networks.weights_meta import meta_value

    value = meta_value(meta, "channels", None)
    return int(value) if value is not None else None


def real_image_loader(
    size: int, resize_mode: str = "crop", window: Sequence[float] | None = None, preset: str | None = None,
    channels: int = 1,
) -> Callable[[dict], np.ndarray]:
    """A function from a datalist item to its image as training prepares it, as C x size x size float32 in [0, 1].

    It is the training pipeline itself (:func:`medgen.data.transforms.diffusion_transforms`, ``channels``, no flip),
    its [-1, 1] output mapped back to [0, 1]; errors are those of training (``ImageLoadError`` naming the file).
    """
    from medgen.data.transforms import diffusion_transforms

    pipeline = diffusion_transforms(
        image_size=size, channels=channels, window=window, preset=preset, random_flip=False, resize_mode=resize_mode
    )

    def load(item: dict) -> np.ndarray:
        image = pipeline(dict(item))["image"]
        return ((np.asarray(image, dtype=np.float32) + 1.0) / 2.0).clip(0.0, 1.0)

    return load


def preparation_of(meta: dict | None) -> dict:
    """``resize_mode``/``window``/``preset`` for :func:`load_items` from the metadata of the weights that made a
    samples folder (their training keys ``resize_mode``, ``window``, ``window_preset``), else training's defaults."""
    from medgen.networks.weights_meta import meta_value

    return {"resize_mode": meta_value(meta, "resize_mode", "crop"), "window": meta_value(meta, "window", None),
            "preset": meta_value(meta, "window_preset", None)}


def _stat_key(path: str, extra: str = "") -> str:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise ImageSetError(f"image file not found: {path}") from e
    return f"{os.path.abspath(path)}|{extra}|{mtime}"


def _fingerprint(keys: Sequence[str], size: int, preparation: str = "") -> str:
    h = hashlib.sha256(f"size={size}\n".encode() + (f"prep={preparation}\n".encode() if preparation else b""))
    for k in keys:
        h.update(k.encode() + b"\n")
    return h.hexdigest()[:32]


def _address(item: dict) -> str:
    """Where inside its file an item's image is (npz key and index, NIfTI slice), '' for a whole file."""
    if "npz_key" in item:
        return f"{item['npz_key']}:{item.get('npz_index')}"
    if item.get("slice_index") is not None:
        return f"slice{item.get('slice_axis', 2)}:{item['slice_index']}"
    return ""


def load_items(
    items: Sequence[dict],
    classes: Sequence[str],
    size: int = 64,
    root: str | None = None,
    resize_mode: str = "crop",
    window: Sequence[float] | None = None,
    preset: str | None = None,
    channels: int | None = None,
) -> ImageSet:
    """Load MONAI datalist items (``{"image": path, "label": int}``, plus ``npz_key``/``npz_index`` or
    ``slice_axis``/``slice_index`` where the file holds several images) as training prepares them (see
    :func:`real_image_loader`). An item that fails to load is skipped with one warning line naming the file and
    counted in ``skipped``; when none loads, :class:`ImageSetError` gives the counts by reason. ``channels``: 1 or
    3 as the weights were trained, else decided from the images (see :func:`settle_channels`)."""
    from medgen.data.dataset import describe_failure

    load = real_image_loader(size, resize_mode, window, preset, channels=1 if channels == 1 else 3)
    images, labels, ids, keys = [], [], [], []
    skipped: Counter = Counter()
    failures: list[tuple[str, str]] = []
    for item in items:
        item = dict(item)
        path = str(item["image"])
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        item["image"] = path
        try:
            img = load(item)
            key = _stat_key(path, _address(item))
        except Exception as err:  # any failure of one file leaves that file out, as in training
            reason, message = describe_failure(err, item)
            skipped[reason] += 1
            failures.append((path, message))
            logger.warning("skipped %s", message)
            continue
        extra = _address(item)
        images.append(img)
        labels.append(int(item.get("label", 0)))
        ids.append(f"{path}:{extra}" if extra else path)
        keys.append(key)
    counts = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
    if not images:
        if not items:
            raise ImageSetError("no images in the given datalist items.")
        first = "; ".join(message for _, message in failures[:3])
        raise ImageSetError(f"none of the {len(items)} datalist items could be loaded ({counts}); first: {first}")
    if failures:
        logger.warning("left out %d of %d items that failed to load (%s)", len(failures), len(items), counts)
    stacked = settle_channels(images, channels, "real image set")
    preparation = f"{REAL_PREPARATION}|{resize_mode}|{window}|{preset}" + ("|rgb" if stacked.shape[1] == 3 else "")
    return ImageSet(stacked, np.asarray(labels), list(classes), ids, _fingerprint(keys, size, preparation),
                    skipped=skipped, failures=failures)


#: why a sample its ``samples.jsonl`` names is not read: its file was deleted (a reviewer's reject), or is damaged
SAMPLE_DELETED, SAMPLE_UNREADABLE = "deleted from the samples folder", "unreadable sample"


def read_samples(paths: Sequence[str | os.PathLike], read: Callable[[str], np.ndarray]
                 ) -> tuple[list[int], list[np.ndarray], Counter, list[tuple[str, str]]]:
    """``read`` each sample file: the indices and images of those read, and those left out by reason with their
    messages (each logged). A file deleted from the folder is left out (the folder is the set, ``samples.jsonl`` the
    log of what was made); a damaged one too, so a batch goes on with the rest."""
    kept, images, skipped, failures = [], [], Counter(), []
    for i, path in enumerate(map(str, paths)):
        if not os.path.exists(path):
            skipped[SAMPLE_DELETED] += 1
            failures.append((path, f"{path}: named by samples.jsonl, not in the folder (deleted): left out"))
            continue
        try:
            images.append(read(path))
        except ImageSetError as err:
            skipped[SAMPLE_UNREADABLE] += 1
            failures.append((path, f"{err}: left out"))
            logger.warning("%s: left out", err)
            continue
        kept.append(i)
    return kept, images, skipped, failures


def left_out_text(skipped: Counter | dict) -> str:
    """``1 deleted from the samples folder, 1 unreadable sample`` (empty when none)."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(dict(skipped).items()))


def _load_sample_files(paths: Sequence[str], labels: Sequence[int], classes: Sequence[str], size: int,
                       channels: int | None = None) -> ImageSet:
    """Generated samples (8-bit PNGs of ``medgen sample``) read with PIL; a deleted or damaged one is left out and
    counted (:func:`read_samples`; ``skipped`` and ``failures`` of the set). ``channels``: 1 or 3, else decided from
    the images (:func:`settle_channels`)."""
    kept, images, skipped, failures = read_samples(paths, lambda p: load_image(p, size, channels=channels))
    if not images:
        detail = left_out_text(skipped)
        raise ImageSetError("no images in the given samples" + (f" ({detail})" if detail else "") + ".")
    paths = [str(paths[i]) for i in kept]
    keys = [_stat_key(p) for p in paths]
    stacked = settle_channels(images, channels, "samples set")
    prep = "rgb" if stacked.shape[1] == 3 else ""
    return ImageSet(stacked, np.asarray([labels[i] for i in kept]), list(classes), paths,
                    _fingerprint(keys, size, prep), skipped=skipped, failures=failures)


def read_datalist(path: str | os.PathLike) -> dict:
    """Read a MONAI datalist JSON (with a ``classes`` list)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ImageSetError(f"cannot read datalist {path}: {e}") from e
    if isinstance(data, dict) and "redacted" in data:
        raise ImageSetError(f"datalist {path} is a redacted copy (training with redact_paths: true names files by "
                            "salted hash, not path): give the original datalist the run was trained on")
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
    resize_mode: str = "crop",
    window: Sequence[float] | None = None,
    preset: str | None = None,
    channels: int | None = None,
) -> ImageSet:
    """Load one split (or several, concatenated) of a datalist; ``per_class`` draws at most that many per class.

    ``resize_mode``, ``window``, ``preset`` and ``channels`` are training's keys of the same names (defaults as the
    bundles'; ``channels`` None: decided from the images)."""
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
    return load_items(items, data["classes"], size=size, root=root, resize_mode=resize_mode, window=window,
                      preset=preset, channels=channels)


def _folder_items(folder: Path, classes: Sequence[str] | None) -> tuple[list[dict], list[str]]:
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
    return items, classes


def load_folder(folder: str | os.PathLike, size: int = 64, classes: Sequence[str] | None = None, **prep) -> ImageSet:
    """Load a folder of real images as training would; sub-folder names are the classes (images directly inside
    get class 0). ``prep``: ``resize_mode``, ``window``, ``preset``, ``channels`` as in :func:`load_items`."""
    items, classes = _folder_items(Path(folder), classes)
    return load_items(items, classes, size=size, **prep)


def load_samples_dir(folder: str | os.PathLike, size: int = 64, classes: Sequence[str] | None = None,
                     channels: int | None = None) -> ImageSet:
    """Load a samples folder (``samples.jsonl`` + 8-bit PNGs); without ``samples.jsonl``, the folder's images.

    ``channels``: 1 or 3; else the ``channels`` of the weights that made the samples, else decided from the images."""
    folder = Path(folder)
    meta = folder / "samples.jsonl"
    if not meta.is_file():
        items, classes = _folder_items(folder, classes)
        return _load_sample_files([i["image"] for i in items], [i["label"] for i in items], classes, size, channels)
    if channels is None:
        from medgen.networks.weights_meta import samples_meta

        channels = channels_of(samples_meta(folder))
    from medgen.metrics.judge import read_sample_records

    records = read_sample_records(folder)  # one record per file; a bad line is a one-line error naming it
    if classes is None:
        by_label = {int(r["label"]): r.get("class", str(r["label"])) for r in records}
        classes = [by_label.get(i, str(i)) for i in range(max(by_label) + 1)]
    out = _load_sample_files([str(folder / r["file"]) for r in records], [int(r["label"]) for r in records],
                             classes, size, channels)
    kept = set(out.ids)
    out.records = [r for r in records if str(folder / r["file"]) in kept]
    return out


def load_image_set(source: str | os.PathLike, size: int = 64, split: str = "test", **kw) -> ImageSet:
    """A datalist JSON (its ``split``), a samples folder (with ``samples.jsonl``) or a folder of real images
    (read as training would, see :func:`load_folder`), whichever ``source`` is. ``kw``: ``per_class``, ``seed``
    (datalists), ``resize_mode``, ``window``, ``preset`` (real images), ``channels`` (all)."""
    if str(source).endswith(".json"):
        return load_datalist_split(source, split, size=size, **kw)
    if (Path(source) / "samples.jsonl").is_file():
        return load_samples_dir(source, size=size, channels=kw.get("channels"))
    keep = ("resize_mode", "window", "preset", "channels")
    return load_folder(source, size=size, **{k: v for k, v in kw.items() if k in keep})


def write_samples_dir(
    folder: str | os.PathLike,
    images: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    seeds: Sequence[int] | None = None,
    extra: dict | Sequence[dict] | None = None,
) -> Path:
    """Write images (any form :func:`to_common_form` accepts) as 8-bit grey or RGB PNGs plus ``samples.jsonl``."""
    folder = Path(folder)
    x = to_common_form(images)
    seeds = list(range(len(x))) if seeds is None else list(seeds)
    now = datetime.now(timezone.utc).isoformat()
    lines = []
    for i, (img, label) in enumerate(zip(x, labels)):
        name = classes[int(label)]
        rel = f"{name}/{i:06d}_s{seeds[i]}.png"
        (folder / name).mkdir(parents=True, exist_ok=True)
        pixels = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(folder / rel)
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
