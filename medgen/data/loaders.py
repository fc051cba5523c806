"""Load one 2D training image from any supported file into a channel-first float array in [0, 1].

PNG/JPEG go through MONAI's ``LoadImage`` (PIL reader); DICOM through :mod:`medgen.data.dicom` (pydicom's
modality and VOI LUTs, presets, MONOCHROME1); NIfTI through nibabel with a slice index; MedMNIST npz by key
and index. MONAI's readers do not window DICOM nor address one image in an npz, hence this dispatching loader.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform, Transform

from medgen.data.datalist import suffix_of

logger = logging.getLogger(__name__)


class ImageLoadError(ValueError):
    """An image file cannot be loaded; the message names the file and the problem."""


@lru_cache(maxsize=8)
def _npz_array(path: str, key: str) -> np.ndarray:
    with np.load(path) as data:
        if key not in data.files:
            raise ImageLoadError(f"{path}: no array {key!r} (arrays: {data.files})")
        return np.asarray(data[key])


def _to_unit(array: np.ndarray) -> np.ndarray:
    """Integer images scale by their dtype's range; floats are taken as already in [0, 1] or min-max scaled."""
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return (array.astype(np.float32) - info.min) / float(info.max - info.min)
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return array
    return (array - lo) / max(hi - lo, 1e-8)


def _nifti_slice(path: str, axis: int, index: int | None) -> np.ndarray:
    import nibabel as nib

    volume = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    if volume.ndim == 2:
        return volume
    if volume.ndim != 3:
        raise ImageLoadError(f"{path}: NIfTI with {volume.ndim} dimensions; expected a 2D image or a 3D volume")
    index = volume.shape[axis] // 2 if index is None else index
    if not 0 <= index < volume.shape[axis]:
        raise ImageLoadError(f"{path}: slice {index} out of range 0..{volume.shape[axis] - 1} on axis {axis}")
    return np.take(volume, index, axis=axis)


def nifti_slice_indices(
    path: str | Path, axis: int = 2, index_range: Sequence[int] | None = None, min_foreground: float = 0.1
) -> list[int]:
    """Slices of a volume to use: ``index_range`` (start, stop) or every slice with enough foreground.

    Foreground is the fraction of voxels above 10% of the volume's robust maximum (99.5th percentile).
    """
    import nibabel as nib

    volume = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    if volume.ndim == 2:
        return [0]
    if index_range is not None:
        start, stop = int(index_range[0]), int(index_range[1])
        return list(range(max(start, 0), min(stop, volume.shape[axis])))
    threshold = 0.1 * float(np.percentile(volume, 99.5))
    moved = np.moveaxis(volume > threshold, axis, 0).reshape(volume.shape[axis], -1)
    return [int(i) for i in np.nonzero(moved.mean(axis=1) >= min_foreground)[0]]


class LoadMedicalImage(Transform):
    """Load a 2D image as a float32 ``(C, H, W)`` tensor in [0, 1].

    Args:
        channels: 1 converts colour content to grey (ITU-R 601 luma); 3 keeps RGB (grey repeated).
        window: explicit DICOM window (center, width); overrides the header.
        preset: named DICOM window preset (``lung``, ``brain``, ...), used when ``window`` is None.
    """

    def __init__(self, channels: int = 1, window: Sequence[float] | None = None, preset: str | None = None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.window = tuple(window) if window is not None else None
        self.preset = preset
        self._pil = LoadImage(reader="PILReader", image_only=True, ensure_channel_first=True, dtype=None)

    def read(self, path: str, npz_key: str | None = None, npz_index: int | None = None,
             slice_axis: int = 2, slice_index: int | None = None) -> np.ndarray:
        """The image as (C, H, W) floats in [0, 1], before channel handling."""
        suffix = suffix_of(path)
        if not Path(path).is_file():
            raise ImageLoadError(f"{path}: file does not exist")
        if suffix == ".npz":
            if npz_key is None or npz_index is None:
                raise ImageLoadError(f"{path}: an npz item needs 'npz_key' and 'npz_index'")
            return _to_unit(_npz_array(path, npz_key)[int(npz_index)])[None]
        if suffix == ".npy":
            return _to_unit(np.load(path))[None]
        if suffix in (".nii", ".nii.gz"):
            return _to_unit(_nifti_slice(path, slice_axis, slice_index))[None]
        if suffix in (".dcm", ".dicom", ""):
            from medgen.data.dicom import read_dicom_image

            array, _ = read_dicom_image(path, window=self.window, preset=self.preset)
            return array.astype(np.float32)[None]
        try:
            image = self._pil(path)
        except Exception as err:  # PIL and MONAI raise many types for a bad file
            raise ImageLoadError(f"{path}: cannot read image ({err})") from err
        # MONAI's PILReader returns (C, W, H) for 2D images (spatial axes transposed): bring back to (C, H, W).
        array = np.asarray(image).swapaxes(-1, -2)
        if array.ndim == 2:
            array = array[None]
        return _to_unit(array)

    def to_channels(self, array: np.ndarray) -> np.ndarray:
        if array.shape[0] == 4:  # RGBA: drop alpha
            array = array[:3]
        if self.channels == 1 and array.shape[0] == 3:
            array = (0.299 * array[0] + 0.587 * array[1] + 0.114 * array[2])[None]
        elif self.channels == 3 and array.shape[0] == 1:
            array = np.repeat(array, 3, axis=0)
        return array

    def __call__(self, path: str, **item: Any) -> torch.Tensor:
        array = self.read(str(path), item.get("npz_key"), item.get("npz_index"),
                          int(item.get("slice_axis", 2)), item.get("slice_index"))
        return torch.as_tensor(np.ascontiguousarray(self.to_channels(array)), dtype=torch.float32)


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`; npz/NIfTI addressing keys are read from the item."""

    def __init__(self, keys: KeysCollection = "image", channels: int = 1, window: Sequence[float] | None = None,
                 preset: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(channels=channels, window=window, preset=preset)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], **{k: v for k, v in d.items() if isinstance(k, str) and k != key})
        return d
