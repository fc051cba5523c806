"""MONAI transform pipelines for 2D diffusion training: load, (window), resize, scale to [-1, 1]."""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    EnsureTyped,
    RandFlipd,
    Resized,
    ScaleIntensityRanged,
)

from medgen.data.loaders import LoadMedicalImaged


def diffusion_transforms(
    image_size: int | Sequence[int] = 64,
    channels: int = 1,
    window: Sequence[float] | None = None,
    preset: str | None = None,
    random_flip: bool = False,
    keys: str = "image",
) -> Compose:
    """Training/validation pipeline: ``{"image": path, "label": int}`` to a ``(C, H, W)`` tensor in [-1, 1].

    Everything up to the random flip is deterministic, so a ``CacheDataset`` caches the decoded, resized images
    and an epoch does not decode JPEGs again.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    steps = [
        LoadMedicalImaged(keys, channels=channels, window=window, preset=preset),
        Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
        EnsureTyped(keys, track_meta=False),
        EnsureTyped("label", dtype="long", track_meta=False, allow_missing_keys=True),
    ]
    if random_flip:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
    return Compose(steps)

