"""Load one 2D training image from any supported file into a channel-first float array in [0, 1].

PNG/JPEG/BMP/TIFF go through MONAI's ``LoadImage`` (PIL reader) with a converter that applies the EXIF
orientation and brings every PIL mode to grey or RGB (palette through its palette, CMYK to RGB, alpha dropped);
DICOM through :mod:`medgen.data.dicom` (pydicom's modality and VOI LUTs, presets, MONOCHROME1); NIfTI through
nibabel with a slice index; MedMNIST npz by key and index. MONAI's readers do not window DICOM, address one image
in an npz, normalise PIL modes, refuse decompression bombs, nor check for NaN/Inf and constant images, hence this
dispatching loader. :func:`check_image_file` is the same reading, made cheap, for index time.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImage, MapTransform, Transform
from PIL import Image

from medgen.data.datalist import suffix_of
from medgen.data.image_check import (  # noqa: F401  (check_image_file, RASTER_SUFFIXES: re-exported)
    MAX_IMAGE_PIXELS,
    NPY_HEADER_LOCK,
    RASTER_SUFFIXES,
    ImageLoadError,
    check_image_file,
    check_pixel_count,
    check_values,
    dicom_unit,
    is_dicom_file,
    nifti_slice,
    nifti_slice_indices,
    npy_array,
    pil_converter,
    pil_reason,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _npz_array(path: str, key: str) -> np.ndarray:
    with NPY_HEADER_LOCK, np.load(path) as data:  # each array in an npz has a .npy header
        if key not in data.files:
            raise ImageLoadError(f"{path}: no array {key!r} (arrays: {data.files})")
        return np.asarray(data[key])


def _to_unit(array: np.ndarray) -> np.ndarray:
    """8-bit integer images scale by their dtype's range (0..255); 16-bit and wider integers (PIL I;16, I) by the
    image's own range (min..max), as a DICOM without a window is; floats are taken as already in [0, 1] or
    min-max scaled."""
    if array.dtype.kind in "iu" and array.dtype.itemsize == 1:
        info = np.iinfo(array.dtype)
        return (array.astype(np.float32) - info.min) / float(info.max - info.min)
    array = array.astype(np.float64 if array.dtype.kind in "iu" else np.float32)
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return array.astype(np.float32)
    return ((array - lo) / max(hi - lo, 1e-8)).astype(np.float32)


class LoadMedicalImage(Transform):
    """Load a 2D image as a float32 ``(C, H, W)`` tensor in [0, 1].

    Every file is checked as it loads: a truncated, undecodable, oversized (over ``max_pixels``), non-finite
    (NaN/Inf) or constant image raises :class:`ImageLoadError` naming the file and, in ``reason``, the kind.
    PIL images: EXIF orientation applied, palette through its palette, CMYK to RGB, alpha dropped (as PIL's
    ``convert`` does), 16-bit by the image's own range. A file whose content is DICOM but whose name says
    PNG/JPEG (or the reverse) is read by its content.

    Args:
        channels: 1 converts colour content to grey (ITU-R 601 luma); 3 keeps RGB (grey repeated).
        window: explicit DICOM window (center, width); overrides the header.
        preset: named DICOM window preset (``lung``, ``brain``, ...), used when ``window`` is None.
        max_pixels: largest image decoded, in pixels (default PIL's ``Image.MAX_IMAGE_PIXELS``).
    """

    def __init__(self, channels: int = 1, window: Sequence[float] | None = None, preset: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.window = tuple(window) if window is not None else None
        self.preset = preset
        self.max_pixels = int(max_pixels)
        # passed at call time, MONAI uses this reader only (at init it would fall back to its other readers,
        # including a plain PILReader that reads palette indices, when the converter refuses a file)
        self._reader = PILReader(converter=pil_converter(self.max_pixels), reverse_indexing=False)
        self._pil = LoadImage(reader=self._reader, image_only=True, ensure_channel_first=True, dtype=None)

    def _raster(self, path: str) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = self._pil(path, reader=self._reader)
        except Exception as err:  # PIL and MONAI raise many types for a bad file; MONAI wraps ours
            cause = err
            while cause.__cause__ is not None and not isinstance(cause, ImageLoadError):
                cause = cause.__cause__
            if isinstance(cause, ImageLoadError):
                raise ImageLoadError(str(cause), cause.reason) from err
            raise ImageLoadError(f"{path}: cannot read image ({type(cause).__name__}: {cause})",
                                 pil_reason(cause)) from err
        array = np.asarray(image)
        if array.dtype == np.int32 and array.size and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)  # PIL's 32-bit 'I' holding 16-bit data
        return array

    def read(self, path: str, npz_key: str | None = None, npz_index: int | None = None,
             slice_axis: int = 2, slice_index: int | None = None) -> np.ndarray:
        """The image as (C, H, W) floats in [0, 1], before channel handling; checked (see the class)."""
        suffix = suffix_of(path)
        if not Path(path).is_file():
            raise ImageLoadError(f"{path}: file does not exist", "missing file")
        if suffix == ".npz":
            if npz_key is None or npz_index is None:
                raise ImageLoadError(f"{path}: an npz item needs 'npz_key' and 'npz_index'")
            array = _npz_array(path, npz_key)[int(npz_index)]
            if array.ndim == 3 and array.shape[-1] in (1, 3):  # MedMNIST colour sets: (H, W, 3)
                array = np.moveaxis(array, -1, 0)
            raw = array if array.ndim == 3 else array[None]
        elif suffix == ".npy":
            raw = npy_array(path, self.max_pixels)[None]
        elif suffix in (".nii", ".nii.gz"):
            raw = nifti_slice(path, slice_axis, slice_index)[None]
            check_pixel_count(path, raw.shape[1:], self.max_pixels)
        elif suffix in (".dcm", ".dicom", ""):
            try:
                raw = dicom_unit(path, self.max_pixels, self.window, self.preset)[None]
            except ImageLoadError as err:
                if err.reason != "DICOM not dicom":
                    raise
                raw = self._raster(path)
        else:
            try:
                raw = self._raster(path)
            except ImageLoadError as err:
                if err.reason != "unreadable image" or not is_dicom_file(path):
                    raise
                raw = dicom_unit(path, self.max_pixels, self.window, self.preset)[None]
        check_values(path, raw)
        return _to_unit(raw)

    def to_channels(self, array: np.ndarray, path: str = "image") -> np.ndarray:
        if array.shape[0] == 4:  # RGBA from an array source: drop alpha
            array = array[:3]
        if array.shape[0] not in (1, 3):
            raise ImageLoadError(f"{path}: {array.shape[0]} channels; expected grey or RGB", "unsupported shape")
        if self.channels == 1 and array.shape[0] == 3:
            array = (0.299 * array[0] + 0.587 * array[1] + 0.114 * array[2])[None]
        elif self.channels == 3 and array.shape[0] == 1:
            array = np.repeat(array, 3, axis=0)
        return array

    def __call__(self, path: str, **item: Any) -> torch.Tensor:
        array = self.read(str(path), item.get("npz_key"), item.get("npz_index"),
                          int(item.get("slice_axis", 2)), item.get("slice_index"))
        return torch.as_tensor(np.ascontiguousarray(self.to_channels(array, str(path))), dtype=torch.float32)


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`; npz/NIfTI addressing keys are read from the item."""

    def __init__(self, keys: KeysCollection = "image", channels: int = 1, window: Sequence[float] | None = None,
                 preset: str | None = None, allow_missing_keys: bool = False,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(channels=channels, window=window, preset=preset, max_pixels=max_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], **{k: v for k, v in d.items() if isinstance(k, str) and k != key})
        return d
