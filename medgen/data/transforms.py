"""MONAI transform pipelines for 2D diffusion training: load, (window), resize (aspect kept), scale to [-1, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
    SpatialPadd,
)

from medgen.data.loaders import MAX_IMAGE_PIXELS, LoadMedicalImaged

#: How a non-square image becomes square: ``crop`` scales the short side to the size and centre-crops the long
#: one; ``pad`` scales the long side and pads the short one with black; ``stretch`` resizes each side alone.
RESIZE_MODES = ("crop", "pad", "stretch")
#: Item keys that say where an image is inside its file; only some sources have them, so they cannot collate.
ADDRESS_KEYS = ("slice_axis", "slice_index", "npz_key", "npz_index")


class CenterSquareCropd(MapTransform):
    """Centre-crop ``(C, H, W)`` to a square of the shorter side: MONAI's ``CenterSpatialCrop`` with its size taken
    from each image (MONAI's ``Resize`` scales by the longest side only, so a crop-then-resize needs this)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            side = int(min(d[key].shape[1:]))
            d[key] = CenterSpatialCrop((side,) * (len(d[key].shape) - 1))(d[key])
        return d


def resize_steps(keys: str, size: tuple[int, ...], resize_mode: str = "crop") -> list:
    """MONAI transforms that bring an image to ``size`` as ``resize_mode`` says (see ``RESIZE_MODES``)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if resize_mode == "stretch":
        return [Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True)]
    if resize_mode == "crop":
        return [CenterSquareCropd(keys), Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True)]
    return [Resized(keys, spatial_size=max(size), size_mode="longest", mode="bilinear", anti_aliasing=True),
            SpatialPadd(keys, spatial_size=size, method="symmetric", mode="constant", value=0.0)]


def diffusion_transforms(
    image_size: int | Sequence[int] = 64,
    channels: int = 1,
    window: Sequence[float] | None = None,
    preset: str | None = None,
    random_flip: bool = False,
    random_rotate90: bool = False,
    keys: str = "image",
    resize_mode: str = "crop",
    max_pixels: int = MAX_IMAGE_PIXELS,
    random_crop: int | None = None,
) -> Compose:
    """Training/validation pipeline: ``{"image": path, "label": int}`` to a ``(C, H, W)`` tensor in [-1, 1].

    Every item loses the NIfTI/npz addressing keys (``ADDRESS_KEYS``) and ends with ``channels``
    channels and ``image_size`` pixels whatever the file was, so mixed sources collate. ``resize_mode``:
    ``crop`` (default), ``pad`` or ``stretch`` (see ``RESIZE_MODES``). Everything up to the random flip is
    deterministic, so a ``CacheDataset`` caches the decoded, resized images and an epoch does not decode again.
    ``channels=3`` keeps colour files RGB (grey ones repeated in 3 channels); 1 reads colour as ITU-R 601 luma.

    Augmentation (off by default: an X-ray has a left and a right): ``random_flip`` mirrors left-right with
    probability 0.5 (MONAI ``RandFlipd``); ``random_rotate90`` turns by 0, 90, 180 or 270 degrees, each with
    probability 1/4 (MONAI ``RandRotate90d``). Both together draw uniformly from the 8 symmetries of the square,
    valid for images without an orientation (isolated cells in microscopy). Images must be square to rotate.
    ``random_crop``: end with a random ``random_crop`` x ``random_crop`` window (MONAI ``RandSpatialCropd``), for
    fully convolutional networks (the autoencoder stage) that train on patches and run on whole images.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    steps = [
        LoadMedicalImaged(keys, channels=channels, window=window, preset=preset, max_pixels=max_pixels),
        *resize_steps(keys, size, resize_mode),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
        EnsureTyped(keys, track_meta=False),
        EnsureTyped("label", dtype="long", track_meta=False, allow_missing_keys=True),
        DeleteItemsd(list(ADDRESS_KEYS)),
    ]
    if random_flip:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
    if random_rotate90:
        # prob 3/4 of a turn of k = 1, 2 or 3 quarter turns (uniform): each of the 4 angles with probability 1/4
        steps.append(RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
    if random_crop:
        if any(random_crop > side for side in size):
            raise ValueError(f"random_crop {random_crop} is larger than the image size {list(size)}")
        steps.append(RandSpatialCropd(keys, roi_size=(random_crop, random_crop), random_size=False))
    return Compose(steps)

