"""Read one DICOM image as a windowed grey slice in [0, 1].

Order of operations (DICOM PS3.4 N.2 grey-scale pipeline): stored values -> modality LUT (rescale slope/intercept
or Modality LUT Sequence) -> VOI (explicit window > named preset > header VOI LUT / first Window Center/Width >
full pixel range) -> MONOCHROME1 inverted so that high = bright.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.pixels.decoders.base import get_decoder

__all__ = [
    "WINDOW_PRESETS",
    "DicomReadError",
    "LoadDicomd",
    "check_dicom_header",
    "is_dicom",
    "read_dicom_image",
    "window_to_unit",
]

#: Named (center, width) windows in Hounsfield units (CT) or modality units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
    "abdomen": (40.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (60.0, 160.0),
    "stroke": (40.0, 40.0),
}

#: pip packages that add a decoder for each compressed transfer syntax (pydicom's pixel-data plugins).
_DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE Lossless
}

_GREY = ("MONOCHROME1", "MONOCHROME2")
_KNOWN_GROUPS = (0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x7FE0)


class DicomReadError(ValueError):
    """A file cannot be read as a grey DICOM slice; the message names the file and the problem.

    ``reason`` is a short machine key (``not_dicom``, ``corrupt``, ``truncated``, ``no_pixel_data``, ``colour``,
    ``multi_frame``, ``unsupported_syntax``, ``undecodable``, ``not_2d``, ``missing``, ``bad_rescale``,
    ``non_finite``, ``oversized``) used in batch summaries.
    """

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


def is_dicom(path: str | os.PathLike) -> bool:
    """True if ``path`` is a DICOM file: 'DICM' at byte 128, or (no preamble) a data set pydicom can parse."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group = int.from_bytes(head[:2], "little")
    if group not in (0x0002, 0x0008) and int.from_bytes(head[:2], "big") not in (0x0002, 0x0008):
        return False  # a preamble-less data set starts with group 0002 or 0008
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID"))


def _read(path: Path, stop_before_pixels: bool) -> Dataset:
    """dcmread with errors turned into DicomReadError (not DICOM / corrupt / truncated header)."""
    if not path.is_file():
        raise DicomReadError(f"{path}: no such file", reason="missing")
    if not is_dicom(path):
        raise DicomReadError(
            f"{path}: not a DICOM file (no 'DICM' marker and no parsable data set)", reason="not_dicom"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
            known = any(tag.group in _KNOWN_GROUPS for tag in ds.keys())
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomReadError(
            f"{path}: corrupt or truncated DICOM file ({type(exc).__name__}: {exc})", reason="corrupt"
        ) from exc
    if not known:
        raise DicomReadError(f"{path}: corrupt DICOM file (no recognisable data elements after the header)", "corrupt")
    return ds


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return meta.TransferSyntaxUID
    return pydicom.uid.ImplicitVRLittleEndian


def _expected_native_length(ds: Dataset) -> int:
    bits = int(ds.get("BitsAllocated", 16))
    n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1)
    return (n * bits + 7) // 8


def check_dicom_header(path: str | os.PathLike, ds: Dataset | None = None, frame: int | None = None) -> Dataset:
    """Check, without decoding pixels, that ``path`` holds one grey slice we can decode; return the data set.

    Raises DicomReadError for: no PixelData, colour, multi-frame without ``frame``, a frame out of range,
    a transfer syntax with no decoder installed (naming the pip package), truncated native pixel data.
    """
    path = Path(path)
    if ds is None:
        ds = _read(path, stop_before_pixels=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on invalid values; we raise instead
            return _check(path, ds, frame)
    except DicomReadError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomReadError(f"{path}: corrupt image header ({type(exc).__name__}: {exc})", reason="corrupt") from exc


def _check(path: Path, ds: Dataset, frame: int | None) -> Dataset:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None else ""
        raise DicomReadError(f"{path}: no PixelData - not an image{kind}", reason="no_pixel_data")
    for key in ("Rows", "Columns"):
        if key not in ds:
            raise DicomReadError(
                f"{path}: PixelData present but {key} missing - corrupt image header", reason="corrupt"
            )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    spp = int(ds.get("SamplesPerPixel", 1))
    if photometric not in _GREY or spp != 1:
        raise DicomReadError(
            f"{path}: colour image (PhotometricInterpretation={photometric}, SamplesPerPixel={spp}) "
            "where a grey slice is expected",
            reason="colour",
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 and frame is None:
        raise DicomReadError(
            f"{path}: multi-frame image ({n_frames} frames) where a single grey slice is expected; "
            f"pass frame=<0..{n_frames - 1}>",
            reason="multi_frame",
        )
    if frame is not None and not 0 <= frame < n_frames:
        raise DicomReadError(
            f"{path}: frame {frame} out of range (image has {n_frames} frame(s))", reason="multi_frame"
        )
    for key in ("RescaleSlope", "RescaleIntercept"):
        raw = ds.get(key)
        if raw is None or raw == "":
            continue
        value = float(raw)
        if not math.isfinite(value) or (key == "RescaleSlope" and value == 0):
            raise DicomReadError(
                f"{path}: {key} is {value:g}, so every pixel would rescale to "
                f"{'the intercept' if value == 0 else 'NaN/Inf'}; fix the header or leave the file out",
                reason="bad_rescale",
            )
    tsyntax = _transfer_syntax(ds)
    if tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise DicomReadError(
                f"{path}: unsupported transfer syntax '{tsyntax.name}' ({tsyntax}); no decoder exists",
                reason="unsupported_syntax",
            ) from exc
        if not decoder.is_available:
            pkg = _DECODER_PACKAGES.get(tsyntax, "pylibjpeg and its plugins")
            raise DicomReadError(
                f"{path}: cannot decode transfer syntax '{tsyntax.name}' ({tsyntax}); "
                f"install a decoder: pip install {pkg}",
                reason="unsupported_syntax",
            )
    elif "PixelData" in ds:
        have, need = len(ds.PixelData), _expected_native_length(ds)
        if have < need:
            raise DicomReadError(f"{path}: truncated pixel data ({have} of {need} bytes)", reason="truncated")
    return ds


def window_to_unit(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM window (PS3.3 C.11.2.1.2) onto [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT" or width <= 1:
        lo, hi = center - width / 2.0, center + width / 2.0
        return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _header_window(ds: Dataset) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


def _decode(path: Path, ds: Dataset, frame: int | None) -> np.ndarray:
    tsyntax = _transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if frame is not None:
                ds.pixel_array_options(index=frame)
            arr = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/ValueError/... from its plugins
        hint = ""
        if tsyntax.is_compressed:
            hint = f"; try: pip install {_DECODER_PACKAGES.get(tsyntax, 'pylibjpeg and its plugins')}"
        raise DicomReadError(
            f"{path}: cannot decode pixel data ({tsyntax.name}): {type(exc).__name__}: "
            f"{' '.join(line.strip() for line in str(exc).splitlines())}{hint}",
            reason="undecodable",
        ) from exc
    if arr.ndim != 2:
        raise DicomReadError(
            f"{path}: decoded pixel array has shape {arr.shape}, expected one 2D slice", reason="not_2d"
        )
    return arr


def read_dicom_image(
    path: str | os.PathLike,
    window: tuple[float, float] | None = None,
    preset: str | None = None,
    voi: bool = True,
    frame: int | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Read a grey DICOM slice as float32 (H, W) in [0, 1] plus non-identifying metadata.

    Windowing precedence: ``window`` (center, width) > ``preset`` (key of WINDOW_PRESETS) > header VOI LUT
    Sequence or first Window Center/Width (if ``voi``) > the slice's min/max. MONOCHROME1 is inverted.
    A RescaleSlope of 0/NaN/Inf, values that are NaN/Inf after the modality LUT, and (with ``max_pixels``) a
    slice larger than that raise :class:`DicomReadError` rather than give a black or NaN image.
    """
    path = Path(path)
    if preset is not None and preset not in WINDOW_PRESETS:
        raise KeyError(f"unknown window preset {preset!r}; choose one of {sorted(WINDOW_PRESETS)}")
    ds = check_dicom_header(path, _read(path, stop_before_pixels=False), frame=frame)
    if max_pixels is not None and int(ds.Rows) * int(ds.Columns) > max_pixels:
        raise DicomReadError(f"{path}: {ds.Columns}x{ds.Rows} slice is over the limit of {max_pixels} pixels",
                             reason="oversized")
    stored = _decode(path, ds, frame)
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DicomReadError(f"{path}: invalid modality LUT / rescale attributes ({exc})", reason="corrupt") from exc
    if not np.isfinite(values).all():
        raise DicomReadError(f"{path}: {int(values.size - np.isfinite(values).sum())} of {values.size} pixel "
                             "values are NaN or Inf after the modality LUT", reason="non_finite")

    function = str(ds.get("VOILUTFunction", "LINEAR"))
    used: tuple[float, float] | None = None
    if window is not None:
        used, source, function = (float(window[0]), float(window[1])), "explicit", "LINEAR"
    elif preset is not None:
        used, source, function = WINDOW_PRESETS[preset], f"preset:{preset}", "LINEAR"
    elif voi and "VOILUTSequence" in ds:
        source = "voi_lut"
    elif voi and _header_window(ds) is not None:
        used, source = _header_window(ds), "header"
    else:
        source = "minmax"

    if source == "voi_lut":
        item = ds.VOILUTSequence[0]
        out_bits = int(item.LUTDescriptor[2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lut_in = values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
            lut_out = apply_voi(lut_in, ds, index=0)
        unit = np.clip(np.asarray(lut_out, dtype=np.float64) / float(2**out_bits - 1), 0.0, 1.0)
    elif used is not None:
        if used[1] <= 0:
            raise ValueError(f"window width must be > 0, got {used[1]}")
        unit = window_to_unit(values, used[0], used[1], function)
    else:
        lo, hi = float(values.min()), float(values.max())
        used = ((lo + hi) / 2.0, hi - lo)
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)

    photometric = str(ds.PhotometricInterpretation).strip() if "PhotometricInterpretation" in ds else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    meta = {
        "modality": str(ds.get("Modality", "")),
        "photometric": photometric,
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "pixel_spacing": tuple(float(v) for v in spacing) if spacing else None,
        "window": used,
        "window_source": source,
        "frame": frame,
        "transfer_syntax": str(_transfer_syntax(ds).name),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }
    return unit.astype(np.float32), meta


class LoadDicomd:
    """MONAI-style dictionary transform: ``d[key]`` path -> (1, H, W) float32 windowed image.

    Metadata goes to ``d[f"{key}_meta_dict"]``; a bundle config builds it with
    ``_target_: medgen.data.dicom.LoadDicomd``.
    """

    def __init__(
        self,
        keys: str | list[str] = "image",
        window: tuple[float, float] | None = None,
        preset: str | None = None,
        voi: bool = True,
        frame: int | None = None,
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.window, self.preset, self.voi, self.frame = window, preset, voi, frame

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.keys:
            img, meta = read_dicom_image(d[key], window=self.window, preset=self.preset, voi=self.voi, frame=self.frame)
            d[key] = img[None]
            d[f"{key}_meta_dict"] = meta
        return d
