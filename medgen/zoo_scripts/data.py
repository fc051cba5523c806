"""The training list of a folder of class sub-folders, for an exported bundle (MONAI has no folder-per-class lister).

``dataset_dir`` is a folder with one sub-folder per source class (``NORMAL/``, ``PNEUMONIA/`` ...), or a data set
with its own training split inside (``train/`` or ``Training/``, as the Kermany and brain tumour sets ship).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TRAINING_SPLITS = ("train", "training", "Train", "Training")


def is_marked_synthetic(path: str) -> bool:
    """Whether a PNG carries the synthetic marks medgen writes (``Description`` ``synthetic image (medgen)``, or the
    IPTC digital source type ``trainedAlgorithmicMedia`` in XMP, as other generators write it too)."""
    if not path.lower().endswith(".png"):
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            info = image.info
    except Exception:  # an unreadable file is the loader's to report
        return False
    return (str(info.get("Description", "")).startswith("synthetic image (medgen)")
            or "trainedAlgorithmicMedia" in str(info.get("XML:com.adobe.xmp", "")))


def training_folder(dataset_dir: str) -> str:
    """``dataset_dir`` or its training-split sub-folder."""
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir {dataset_dir}: no such folder; pass --dataset_dir <folder of classes>")
    for name in TRAINING_SPLITS:
        if os.path.isdir(os.path.join(dataset_dir, name)):
            return os.path.join(dataset_dir, name)
    return dataset_dir


def class_folders(classes: Sequence[str], class_map: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Model class -> the source folders merged into it (each class is its own folder without a map)."""
    if not class_map:
        return {c: [c] for c in classes}
    return {c: list(class_map[c]) for c in classes}


def folder_datalist(dataset_dir: str, classes: Sequence[str], class_map: Mapping[str, Sequence[str]] | None = None,
                    max_items_per_class: int | None = None) -> list[dict]:
    """``[{"image": path, "label": class index}, ...]`` for every image in the classes' folders, sorted; at most
    ``max_items_per_class`` per class (spread evenly over its files) for brief runs. Synthetic images are left out
    (:func:`is_marked_synthetic`; a samples folder is refused), as ``medgen data index`` leaves them out."""
    root = training_folder(dataset_dir)
    if os.path.isfile(os.path.join(root, "samples.jsonl")):
        raise ValueError(f"{root} is a samples folder (samples.jsonl): its images are synthetic; pass the real data "
                         "set as --dataset_dir")
    items, synthetic = [], 0
    for label, (name, folders) in enumerate(class_folders(classes, class_map).items()):
        found = []
        for folder in folders:
            path = os.path.join(root, folder)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"{path}: no folder for class {name!r} (classes {list(classes)})")
            for file in sorted(os.listdir(path)):
                if not file.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if is_marked_synthetic(os.path.join(path, file)):  # never trained on as a real image
                    synthetic += 1
                    continue
                found.append({"image": os.path.join(path, file), "label": label})
        if not found:
            raise ValueError(f"{root}: class {name!r} has no images in {folders}")
        if max_items_per_class and len(found) > max_items_per_class:
            step = len(found) / max_items_per_class
            found = [found[int(i * step)] for i in range(max_items_per_class)]
        items += found
    if synthetic:
        print(f"left out {synthetic} synthetic image(s) (PNG marked as generated) found among the real ones in {root}")
    return items


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``(C, H, W)`` image with ``channels`` channels as medgen reads files: colour to grey by ITU-R 601 luma,
    grey repeated for a colour model, an alpha channel dropped."""
    image = image.float()
    if channels == 1:
        if image.shape[0] >= 3:
            luma = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(3, 1, 1)
            return (image[:3] * luma).sum(0, keepdim=True)
        return image[:1]
    if image.shape[0] < channels:
        return image[:1].repeat(channels, 1, 1)
    return image[:channels]
