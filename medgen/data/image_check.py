"""Index-time checks of image files, with PIL, numpy, nibabel and pydicom only (no torch/MONAI import, so
``medgen data index`` stays quick): decode cheaply with a pixel limit and refuse truncated, undecodable, oversized,
too small, NaN/Inf and constant images with an :class:`ImageLoadError` that names the file and the reason.
:mod:`medgen.data.loaders` reads files for training through the same conversions and checks.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from medgen.data.datalist import suffix_of

#: Largest image, in pixels, that is decoded (PIL's own ``Image.MAX_IMAGE_PIXELS``, ~89.5 megapixels): a larger
#: file (a decompression bomb, a whole-slide image) is refused from its header, before any decoding.
MAX_IMAGE_PIXELS = 89_478_485
#: Smallest side, in pixels, of an image worth training on.
MIN_IMAGE_SIDE = 4
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: numpy parses a .npy header with ``ast.literal_eval``. CPython 3.11 up to 3.11.7 keeps the AST builder's recursion
#: counter per interpreter, not per call, so when the GIL changes hands during a parse (a garbage collection running
#: finalizers) two threads parsing at once fail with "SystemError: AST constructor recursion depth mismatch"
#: (python/cpython#106905). Files are checked and loaded in threads, so headers are parsed one at a time under this
#: lock (the pixel data is still read in parallel).
NPY_HEADER_LOCK = threading.Lock()

# PIL modes read as they are (grey, RGB, 16/32-bit integer, float); the rest are converted by ``_pil_mode``.
_KEEP_MODES = {"L", "RGB", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageLoadError(ValueError):
    """An image file cannot be loaded; the message names the file and the problem.

    ``reason`` is a short phrase (``truncated image``, ``non-finite values``, ...) used in counts by reason.
    """

    def __init__(self, message: str, reason: str = "unreadable image") -> None:
        super().__init__(message)
        self.reason = reason


def pil_reason(err: BaseException) -> str:
    """The skip reason for an error PIL raised while opening or decoding a file."""
    if isinstance(err, Image.DecompressionBombError):
        return "oversized image"
    text = str(err).lower()
    return "truncated image" if "truncat" in text or "broken data stream" in text else "unreadable image"


def check_pixel_count(path: str | Path, shape: Sequence[int], max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose 2D size is over ``max_pixels`` or under ``MIN_IMAGE_SIDE`` on a side."""
    height, width = int(shape[0]), int(shape[1])
    if height * width > max_pixels:
        raise ImageLoadError(f"{path}: {width}x{height} image ({height * width / 1e6:.0f} megapixels) is over the "
                             f"limit of {max_pixels / 1e6:.0f} megapixels (max_pixels)", "oversized image")
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{path}: {width}x{height} image is smaller than {MIN_IMAGE_SIDE} pixels on a side",
                             "too small")


def _pil_mode(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then grey or RGB: palette (P, PA) through its palette, CMYK/YCbCr/LAB/HSV to RGB,
    alpha dropped (LA to L, RGBA to RGB, as PIL's own ``convert`` does), 1-bit to L. 16/32-bit and float stay."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _KEEP_MODES:
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")  # P/PA through the palette, RGBA/RGBa/RGBX, CMYK, YCbCr, LAB, HSV


def pil_converter(max_pixels: int = MAX_IMAGE_PIXELS):
    """A ``PILReader(converter=...)`` that refuses images over ``max_pixels`` before decoding and normalises modes."""

    def convert(image: Image.Image) -> Image.Image:
        path = getattr(image, "filename", "") or "image"
        check_pixel_count(path, (image.height, image.width), max_pixels)
        try:
            return _pil_mode(image)
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated / corrupt data
            raise ImageLoadError(f"{path}: cannot decode image ({err})", pil_reason(err)) from err

    return convert


def _pil_array(image: Image.Image) -> np.ndarray:
    """(H, W) or (H, W, 3) array of a normalised image; 32-bit 'I' within 0..65535 as uint16."""
    array = np.asarray(image)
    if image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)
    return array


def check_values(path: str | Path, array: np.ndarray) -> None:
    """Refuse an image with NaN/Inf values or a single value everywhere (it carries nothing to learn)."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise ImageLoadError(f"{path}: {bad} of {array.size} pixel values are NaN or Inf", "non-finite values")
    if array.size == 0 or float(array.max()) == float(array.min()):
        value = float(array.flat[0]) if array.size else float("nan")
        raise ImageLoadError(f"{path}: constant image (every pixel is {value:g})", "constant image")


def _nifti_volume(path: str | Path) -> np.ndarray:
    """The NIfTI data as float32, 2D or 3D (trailing singleton dimensions dropped); errors name the file."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) not in (2, 3):
            raise ImageLoadError(f"{path}: NIfTI of shape {shape}; expected a 2D image or a 3D volume "
                                 "(split a 4D series into volumes first)", "unsupported shape")
        volume = np.asanyarray(image.dataobj).astype(np.float32).reshape(shape)
    except ImageLoadError:
        raise
    except Exception as err:  # nibabel, gzip and zlib raise many types for a broken or truncated file
        raise ImageLoadError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})", "unreadable NIfTI") from err
    return volume


def nifti_slice(path: str, axis: int, index: int | None) -> np.ndarray:
    """One 2D slice of a NIfTI image; a volume with any NaN/Inf is refused whole, as at index time."""
    volume = _nifti_volume(path)
    if not np.isfinite(volume).all():
        check_values(path, volume)
    if volume.ndim == 2:
        return volume
    index = volume.shape[axis] // 2 if index is None else int(index)
    if not 0 <= index < volume.shape[axis]:
        raise ImageLoadError(f"{path}: slice {index} out of range 0..{volume.shape[axis] - 1} on axis {axis}",
                             "unsupported shape")
    return np.take(volume, index, axis=axis)


def nifti_slice_indices(
    path: str | Path, axis: int = 2, index_range: Sequence[int] | None = None, min_foreground: float = 0.1,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[int]:
    """Slices of a volume to use: ``index_range`` (start, stop) or every slice with enough foreground.

    Foreground is the fraction of voxels above 10% of the volume's robust maximum (99.5th percentile).
    Constant slices are never chosen; a volume with NaN/Inf values, or whose slices are over ``max_pixels``,
    raises :class:`ImageLoadError`.
    """
    volume = _nifti_volume(path)
    if volume.ndim == 2:
        check_pixel_count(path, volume.shape, max_pixels)
        check_values(path, volume)
        return [0]
    check_pixel_count(path, np.delete(np.asarray(volume.shape), axis), max_pixels)
    if not np.isfinite(volume).all():
        check_values(path, volume)
    moved = np.moveaxis(volume, axis, 0).reshape(volume.shape[axis], -1)
    varying = moved.max(axis=1) > moved.min(axis=1)
    if not varying.any():
        check_values(path, volume)  # raises: constant volume
    if index_range is not None:
        start, stop = int(index_range[0]), int(index_range[1])
        return [i for i in range(max(start, 0), min(stop, volume.shape[axis])) if varying[i]]
    threshold = 0.1 * float(np.percentile(volume, 99.5))
    keep = ((moved > threshold).mean(axis=1) >= min_foreground) & varying
    return [int(i) for i in np.nonzero(keep)[0]]


def _dicom_error(err: Exception) -> ImageLoadError:
    reason = getattr(err, "reason", "unreadable")
    error = ImageLoadError(str(err), f"DICOM {str(reason).replace('_', ' ')}")
    error.__cause__ = err
    return error


def npy_array(path: str, max_pixels: int) -> np.ndarray:
    try:
        with NPY_HEADER_LOCK:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # numpy raises ValueError/OSError/EOFError... for a broken file
        raise ImageLoadError(f"{path}: cannot read .npy ({type(err).__name__}: {err})") from err
    shape = tuple(array.shape)
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        shape = tuple(n for i, n in enumerate(shape) if not (n == 1 and i in (0, 2)))[:2]
    if len(shape) != 2:
        raise ImageLoadError(f"{path}: array of shape {array.shape}; expected one 2D image", "unsupported shape")
    check_pixel_count(path, shape, max_pixels)
    try:
        return np.asarray(array).reshape(shape)
    except Exception as err:  # a truncated .npy fails here
        raise ImageLoadError(f"{path}: cannot read .npy ({type(err).__name__}: {err})", "truncated image") from err


#: PIL modes read as grey (one channel); every other mode is colour (read as RGB)
GREY_MODES = {"1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
#: what reading does to a file of each converted PIL mode (the decisions counted at index time)
MODE_CONVERSIONS = {
    "RGBA": "RGBA converted to RGB (alpha dropped)", "RGBa": "RGBA converted to RGB (alpha dropped)",
    "RGBX": "RGBX converted to RGB", "LA": "grey+alpha converted to grey (alpha dropped)",
    "La": "grey+alpha converted to grey (alpha dropped)", "P": "palette (P) converted to RGB through its palette",
    "PA": "palette (PA) converted to RGB through its palette (alpha dropped)", "CMYK": "CMYK converted to RGB",
    "YCbCr": "YCbCr converted to RGB", "LAB": "LAB converted to RGB", "HSV": "HSV converted to RGB",
    "1": "1-bit converted to grey",
}


def _open_raster(path: str, max_pixels: int, draft: bool = False) -> tuple[np.ndarray, str]:
    """Decode a PNG/JPEG/BMP/TIFF with PIL as (H, W) or (H, W, 3), with the file's own PIL mode; ``draft`` decodes
    JPEG at 1/8 size (cheap)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixel_count(path, (image.height, image.width), max_pixels)
                mode = image.mode
                if draft and image.format == "JPEG":
                    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                return _pil_array(_pil_mode(image)), mode
    except ImageLoadError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ImageLoadError(f"{path}: cannot read image ({type(err).__name__}: {err})", pil_reason(err)) from err


#: mean difference between colour channels (in 8-bit levels) above which an RGB image is colour, not grey content
#: stored as RGB (JPEG chroma rounding of a grey picture stays well below it; a stained cell is far above)
COLOUR_THRESHOLD = 2.0


def has_colour(array: np.ndarray) -> bool:
    """Whether an ``(H, W, 3)`` image holds colour: its channels differ by more than :data:`COLOUR_THRESHOLD` levels
    on average. Grey pictures saved as RGB (many JPEG X-ray and MRI sets) are grey content."""
    if array.ndim != 3 or array.shape[-1] < 3:
        return False
    a = array[..., :3].astype(np.float32)
    scale = 1.0 if array.dtype == np.uint8 else 255.0 / max(float(a.max()), 1e-8)
    diff = (np.abs(a[..., 0] - a[..., 1]) + np.abs(a[..., 1] - a[..., 2])).mean() / 2.0
    return float(diff) * scale > COLOUR_THRESHOLD


class FileKind(NamedTuple):
    """What an image file is, as stored: its PIL ``mode`` (None for DICOM, NIfTI, .npy) and whether its content is
    colour (:func:`has_colour`)."""

    mode: str | None
    colour: bool


def check_image_file(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> FileKind:
    """Index-time check of one PNG/JPEG/BMP/TIFF, .npy or DICOM file: decode it cheaply (JPEG at 1/8 size, the
    pixel limit checked from the header first) and raise :class:`ImageLoadError` (with ``reason``) when it is
    truncated, undecodable, oversized, too small, non-finite or constant. NIfTI is checked by
    :func:`nifti_slice_indices`. PIL's ``verify()`` misses truncated JPEGs; decoding does not.

    Returns the file's :class:`FileKind`: its PIL mode as stored (``RGBA``, ``P``, ``CMYK``, ``L``, ...; None for
    non-raster files) and whether it holds colour, so the indexer can count what reading converts
    (:data:`MODE_CONVERSIONS`) and which class folders mix grey and colour images."""
    path = str(path)
    suffix = suffix_of(path)
    mode = None
    if suffix == ".npy":
        check_values(path, npy_array(path, max_pixels))
    elif suffix in RASTER_SUFFIXES:
        try:
            array, mode = _open_raster(path, max_pixels, draft=True)
        except ImageLoadError as err:
            if err.reason != "unreadable image" or not is_dicom_file(path):
                raise
            array = dicom_unit(path, max_pixels)
        check_values(path, array)
        return FileKind(mode, has_colour(array))
    elif suffix in (".dcm", ".dicom", ""):
        check_values(path, dicom_unit(path, max_pixels))
    return FileKind(mode, False)


def is_dicom_file(path: str) -> bool:
    from medgen.data.dicom import is_dicom

    return is_dicom(path)


def dicom_unit(path: str, max_pixels: int, window: Sequence[float] | None = None,
                preset: str | None = None) -> np.ndarray:
    from medgen.data.dicom import DicomReadError, read_dicom_image

    try:
        array, meta = read_dicom_image(path, window=window, preset=preset, max_pixels=max_pixels)
    except DicomReadError as err:
        raise _dicom_error(err) from err
    check_pixel_count(path, array.shape, max_pixels)
    return array
