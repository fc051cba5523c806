"""Write generated images as synthetic DICOM (Secondary Capture, CR, MR, VL Microscopic) and export sample folders.

Every file is built from scratch (nothing is copied from a real header) and carries SyntheticData = YES,
ImageType DERIVED\\SECONDARY, BurnedInAnnotation NO, a synthetic patient, UIDs derived from what the image is
(weights sha256, class, seed, sampler settings, IOD, UID root: the same image exported twice gets the same UIDs),
MONOCHROME2 with a window matching the pixel range (grey) or RGB, 8 bits a sample, pixel-interleaved (colour:
Secondary Capture or VL Microscopic Image; CR and MR are grey only), the class label (ImageComments, which viewers
show per instance), the provenance (checkpoint sha256, seed, sampler, steps, guidance) in ImageComments,
DerivationDescription and ContributingEquipmentSequence, and a pixel spacing, body part and view only where they are
known
(:mod:`medgen.export.acquisition`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import hashlib
import json
import os
import secrets
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medgen.export.acquisition import BUNDLE_ACQUISITION, Spacing, resolve_spacing
from medgen.export.paths import UnsafePathError, confined_path, inside, resolved
from medgen.fileio import atomic_write, is_temp_file, write_bytes_atomic
from medgen.folder_lock import is_lock_file

__all__ = ["FORMATS", "IOD_CHANNELS", "IODS", "SyntheticStudy", "channels_of", "check_iod_channels", "derived_uid",
           "export_images", "provenance_text", "samples_channels", "to_stored", "to_stored_rgb", "write_dicom"]

_SOFTWARE = "medgen 0.1.0"
MANIFEST = "manifest.csv"
#: where ``medgen export --send-to`` writes what the PACS took, unless ``--report`` says otherwise
DEFAULT_SEND_REPORT = "send_report.csv"

#: iod key -> (SOP Class UID, Modality, human name)
IODS: dict[str, tuple[str, str, str]] = {
    "sc": ("1.2.840.10008.5.1.4.1.1.7", "OT", "Secondary Capture Image"),
    "cr": ("1.2.840.10008.5.1.4.1.1.1", "CR", "Computed Radiography Image"),
    "mr": ("1.2.840.10008.5.1.4.1.1.4", "MR", "MR Image"),
    "vlm": ("1.2.840.10008.5.1.4.1.1.77.1.2", "GM", "VL Microscopic Image"),
}
#: iod key -> the image channels it takes: 1 grey (MONOCHROME2), 3 colour (RGB)
IOD_CHANNELS: dict[str, tuple[int, ...]] = {"sc": (1, 3), "cr": (1,), "mr": (1,), "vlm": (3,)}

_PROVENANCE_KEYS = ("checkpoint_sha256", "seed", "sampler", "steps", "guidance_scale")
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgen:synthetic-dicom")


def derived_uid(uid_root: str | None, *parts: object) -> str:
    """A UID that depends only on ``parts`` and the root: ``2.25.<uuid5>`` (ISO/IEC 9834-8 name-based UUID) when
    no root is set, else pydicom's hash form under ``uid_root`` (at most 64 characters either way)."""
    name = json.dumps([str(p) for p in parts], separators=(",", ":"))
    if not uid_root:
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
    try:
        return str(generate_uid(prefix=uid_root.rstrip(".") + ".", entropy_srcs=[name]))
    except ValueError as exc:
        raise ValueError(f"UID root {uid_root!r} is not usable ({exc}); give digits and dots, at most 53 "
                         "characters (--uid-root), or none for 2.25 UUID-derived UIDs") from None


@dataclass
class SyntheticStudy:
    """UIDs and synthetic patient shared by the files of one export (one study, one series).

    With ``key`` (what the images come from, e.g. the weights sha256) the patient, study, series and frame of
    reference are derived from it, the root and the IOD, so exporting the same images again gives the same
    ones; without it they are fresh per run.
    """

    uid_root: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    study_description: str = "Synthetic images (medgen)"
    series_number: int = 1
    created: _dt.datetime = field(default_factory=lambda: _dt.datetime.now().replace(microsecond=0))
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    key: str | None = None
    iod: str = "sc"

    def __post_init__(self) -> None:
        if self.key:
            run = hashlib.sha256(self.key.encode()).hexdigest()[:12].upper()
            uid = lambda *parts: derived_uid(self.uid_root, self.key, *parts)  # noqa: E731
            self.patient_name = self.patient_name or f"SYNTHETIC^{run[:8]}"
        else:
            run = secrets.token_hex(4).upper()
            uid = lambda *parts: self.new_uid()  # noqa: E731
            self.patient_name = self.patient_name or f"SYNTHETIC^RUN{run}"
        self.patient_id = self.patient_id or f"SYN-{run}"
        self.study_instance_uid = self.study_instance_uid or uid("study")
        self.series_instance_uid = self.series_instance_uid or uid("series", self.iod)
        self.frame_of_reference_uid = self.frame_of_reference_uid or uid("frame of reference", self.iod)

    def new_uid(self) -> str:
        """A fresh random UID under ``uid_root`` (pydicom's 2.25 UUID form when no root is set)."""
        prefix = None if not self.uid_root else self.uid_root.rstrip(".") + "."
        return str(generate_uid(prefix=prefix))

    def instance_uid(self, *parts: object) -> str:
        """The SOPInstanceUID of the image that ``parts`` identify in this study (derived, see :func:`derived_uid`)."""
        return derived_uid(self.uid_root, self.key or self.study_instance_uid, "instance", self.iod, *parts)

    @property
    def study_date(self) -> str:
        return self.created.strftime("%Y%m%d")

    @property
    def study_time(self) -> str:
        return self.created.strftime("%H%M%S")

    @property
    def study_id(self) -> str:
        return str(self.patient_id)[-16:]


def provenance_text(class_name: str, provenance: dict) -> str:
    """One line a human can read and a script can parse: ``class=...; checkpoint_sha256=...; seed=...``."""
    parts = [f"class={class_name}"] + [
        f"{k}={provenance[k]}" for k in _PROVENANCE_KEYS if provenance.get(k) is not None
    ]
    parts += [f"{k}={v}" for k, v in sorted(provenance.items()) if k not in _PROVENANCE_KEYS and v is not None]
    return "; ".join(parts)


def channels_of(image: np.ndarray) -> int:
    """1 for an (H, W) image, 3 for an (H, W, 3) colour one; ValueError for any other shape."""
    shape = np.shape(image)
    if len(shape) == 2:
        return 1
    if len(shape) == 3 and shape[-1] == 3:
        return 3
    raise ValueError(f"expected a 2D (H, W) grey or (H, W, 3) RGB image, got shape {shape}")


def check_iod_channels(iod: str, channels: int, where: str = "the image is", option: str = "--iod") -> None:
    """One-line ValueError when ``iod`` does not take images of ``channels`` channels, naming the IODs that do."""
    if iod not in IODS:
        raise ValueError(f"unknown iod {iod!r}; choose one of {sorted(IODS)}")
    if channels in IOD_CHANNELS[iod]:
        return
    fits = [f"{k} ({IODS[k][2]})" for k in IODS if channels in IOD_CHANNELS[k]]
    fits = " or ".join([", ".join(fits[:-1]), fits[-1]] if len(fits) > 1 else fits)
    kind, takes = ("RGB colour (3 channels)", "grey only") if channels == 3 else ("grey (1 channel)", "RGB colour only")
    raise ValueError(f"{where} {kind}, but {option} {iod} ({IODS[iod][2]}) takes {takes}; give {option} {fits}")


def to_stored_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> uint8 [0, 255]; uint8 input kept (other integers checked to fit 8 bits)."""
    image = np.asarray(image)
    channels_of(image)
    if image.dtype.kind in "iu":
        if image.min() < 0 or image.max() > 255:
            raise ValueError(f"integer RGB values {image.min()}..{image.max()} do not fit 8 bits")
        return image.astype(np.uint8)
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or inf")
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def to_stored(image: np.ndarray, bits: int = 16) -> np.ndarray:
    """Float [0, 1] -> uint16 in [0, 2**bits - 1]; uint8/uint16 input kept (checked against ``bits``)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D (H, W) image, got shape {image.shape}")
    top = 2**bits - 1
    if image.dtype.kind in "iu":
        if image.min() < 0 or image.max() > top:
            raise ValueError(f"integer image values {image.min()}..{image.max()} do not fit {bits} bits")
        return image.astype(np.uint16)
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or inf")
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _add_microscopy(ds: Dataset, study: SyntheticStudy, class_name: str, sop_uid: str) -> None:
    """The VL Microscopic Image IOD's Acquisition Context module (Type 2 sequence, empty: no acquisition took
    place) and Specimen module (a synthetic container and specimen, identified per image, with their Type 2
    attributes present and empty: no container, issuer or preparation exists)."""
    ds.AcquisitionContextSequence = Sequence([])
    ds.ContainerIdentifier = f"{study.patient_id}-{sop_uid[-8:]}"[:64]
    ds.IssuerOfTheContainerIdentifierSequence = Sequence([])
    ds.ContainerTypeCodeSequence = Sequence([])
    specimen = Dataset()
    specimen.SpecimenIdentifier = ds.ContainerIdentifier
    specimen.SpecimenUID = derived_uid(study.uid_root, "specimen", sop_uid)
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence([])
    specimen.SpecimenShortDescription = f"Synthetic image, class {class_name}"[:64]
    specimen.SpecimenPreparationSequence = Sequence([])
    ds.SpecimenDescriptionSequence = Sequence([specimen])


def _build(
    pixels: np.ndarray,
    *,
    iod: str,
    study: SyntheticStudy,
    instance_number: int,
    class_name: str,
    provenance: dict,
    body_part: str | None,
    bits: int,
    window: tuple[float, float],
    spacing: Spacing | None,
    view_position: str | None = None,
    patient_orientation: tuple[str, str] | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    sop_class, modality, iod_name = IODS[iod]
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    text = provenance_text(class_name, provenance)
    if spacing is not None:
        text += f"; pixel_spacing={spacing.describe(pixels.shape)}"
    elif iod != "mr":
        text += "; pixel_spacing=unknown (the source has none and no field of view was given)"
    sop_uid = sop_instance_uid or study.new_uid()
    colour = pixels.ndim == 3

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "SECONDARY"] + (["OTHER"] if iod == "mr" else [])
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.ContentDate, ds.ContentTime = date, time
    ds.AccessionNumber = ""
    ds.Modality = modality
    if iod == "sc":
        ds.ConversionType = "SYN"
    ds.Manufacturer = "medgen"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description[:64]
    ds.SeriesDescription = f"SYNTHETIC {iod_name}"[:64]
    ds.ManufacturerModelName = "medgen diffusion sampler"
    ds.DerivationDescription = f"Synthetic image generated by a diffusion model. {text}"[:1024]
    ds.SyntheticData = "YES"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if body_part:
        ds.BodyPartExamined = body_part.upper()[:16]
    elif iod != "vlm":  # General Series Type 2C: present and empty (unknown) when no body part says it is unpaired
        ds.Laterality = ""  # (a specimen under a microscope has none)
    if iod == "mr":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = ""
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
        ds.PatientPosition = "HFS"
    if iod == "cr":  # Type 2: present, empty when the view is not known
        ds.ViewPosition = view_position.upper() if view_position else ""
    ds.SoftwareVersions = _SOFTWARE
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = study.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = study.series_number
    ds.InstanceNumber = int(instance_number)
    if iod == "mr":
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    else:
        ds.PatientOrientation = list(patient_orientation) if patient_orientation else ""
    ds.ImageComments = text[:10240]
    if colour:  # Image Pixel module, RGB: 8 bits a sample, R1G1B1R2G2B2... (PlanarConfiguration 0)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[:2]
    if spacing is not None:
        values = [round(float(v), 6) for v in spacing.values]
        ds.PixelSpacing = values
        if iod == "cr":
            ds.ImagerPixelSpacing = values
        elif iod == "sc":
            ds.NominalScannedPixelSpacing = values
    if colour:  # no VOI window: it applies to grey images only
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.BurnedInAnnotation = "NO"
    if not colour:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.VOILUTFunction = "LINEAR"
        ds.WindowCenterWidthExplanation = "FULL RANGE"
    ds.LossyImageCompression = "00"
    if iod == "vlm":
        _add_microscopy(ds, study, class_name, sop_uid)
    equipment = Dataset()
    equipment.Manufacturer = "medgen"
    equipment.ManufacturerModelName = "medgen diffusion sampler"
    equipment.SoftwareVersions = _SOFTWARE
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = f"Synthetic image generation. {text}"[:1024]
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code("109102", "DCM", "Processing Equipment")])
    ds.ContributingEquipmentSequence = Sequence([equipment])
    ds.PixelData = pixels.astype(np.uint8).tobytes() if colour else pixels.astype("<u2").tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDGEN_010"
    ds.file_meta = meta
    return ds


def write_dicom(
    image: np.ndarray,
    path: str | os.PathLike,
    *,
    iod: str = "sc",
    study: SyntheticStudy,
    instance_number: int,
    class_name: str,
    provenance: dict,
    body_part: str | None = None,
    bits: int = 16,
    pixel_spacing: tuple[float, float] | Spacing | None = None,
    spacing_source: str = "given by the caller",
    view_position: str | None = None,
    patient_orientation: tuple[str, str] | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Write one (H, W) image (float in [0, 1] or uint16) or (H, W, 3) RGB image (float in [0, 1] or uint8) as a
    synthetic DICOM file; atomic; returns the path. Colour goes to ``sc`` or ``vlm`` as 8-bit RGB (``bits`` is
    for grey), grey to ``sc``, ``cr`` or ``mr``; another pairing is a one-line ValueError.

    ``pixel_spacing`` is (row, column) mm (or a :class:`~medgen.export.acquisition.Spacing`), written as
    PixelSpacing, plus ImagerPixelSpacing (CR) or NominalScannedPixelSpacing (SC), with ``spacing_source`` in
    ImageComments, DerivationDescription and ContributionDescription (PixelSpacingCalibrationDescription needs a
    calibration type, and no calibration was made). Left out when None, except for MR, which requires it.
    ``body_part``, ``view_position`` (CR) and ``patient_orientation`` are written only when given.
    Float input fills the full stored range and gets the window of that range; integer input keeps its values
    and gets the window of its own min..max.
    """
    channels = channels_of(image)
    check_iod_channels(iod, channels)
    if bits not in (12, 16):
        raise ValueError(f"bits must be 12 or 16, got {bits}")
    spacing = pixel_spacing
    if spacing is not None and not isinstance(spacing, Spacing):
        spacing = Spacing(float(spacing[0]), float(spacing[1]), spacing_source)
    if spacing is None and iod == "mr":
        raise ValueError("an MR image needs its pixel spacing (PixelSpacing is required): give --field-of-view-mm "
                         "(e.g. 240 for a head) or --pixel-spacing")
    pixels = to_stored_rgb(image) if channels == 3 else to_stored(image, bits)
    if np.asarray(image).dtype.kind == "f":
        lo, hi = 0, 2**bits - 1
    else:
        lo, hi = int(pixels.min()), int(pixels.max())
    window = ((lo + hi + 1) / 2.0, float(hi - lo + 1))  # unused for colour
    ds = _build(
        pixels,
        iod=iod,
        study=study,
        instance_number=instance_number,
        class_name=class_name,
        provenance=provenance,
        body_part=body_part,
        bits=bits,
        window=window,
        spacing=spacing,
        view_position=view_position,
        patient_orientation=patient_orientation,
        sop_instance_uid=sop_instance_uid,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Export of a sampler output folder (samples.jsonl + PNG / .npy images)
# ---------------------------------------------------------------------------------------------------------------------

FORMATS: dict[str, str] = {"dicom": ".dcm", "png": ".png", "png16": ".png", "nifti": ".nii.gz"}
MANIFEST_COLUMNS = [
    "file", "source", "line", "format", "class", "label", "seed", "sampler", "steps", "guidance_scale",
    "checkpoint_sha256", "sop_instance_uid", "series_instance_uid", "study_instance_uid",
]  # fmt: skip


#: PIL modes read as colour (the sampler writes RGB; the rest are converted to RGB)
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")


def load_sample_image(samples_dir: Path, rel: str) -> np.ndarray:
    """The float copy ``<stem>.npy`` beside the PNG when present (squeezed to 2D, clipped to [0, 1]), else the PNG.
    A colour sample (an RGB PNG, or a ``(3, H, W)`` copy) comes back as ``(H, W, 3)``.

    ``rel`` must stay inside ``samples_dir`` (no ``..``, not absolute, no symlink out, the ``.npy`` included):
    :class:`~medgen.export.paths.UnsafePathError` otherwise.
    """
    from PIL import Image

    png = confined_path(samples_dir, rel, "the samples folder")
    npy = png.with_suffix(".npy")
    if npy.is_file():
        if not inside(samples_dir, npy):
            raise UnsafePathError(npy.name, samples_dir, f"a symlink to {resolved(npy)}, outside the samples "
                                  f"folder {resolved(samples_dir)}")
        arr = np.squeeze(np.load(npy)).astype(np.float32)
        if arr.ndim == 3 and arr.shape[0] == 3:
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] == 3):
            raise ValueError(f"{npy}: expected a 2D grey or (3, H, W) RGB image, got shape {arr.shape}")
        return np.clip(arr, 0.0, 1.0)
    if not png.is_file():
        raise FileNotFoundError(f"{png}: no such image file")
    with Image.open(png) as im:
        if im.mode in ("I", "I;16"):
            arr = np.asarray(im.convert("I;16"))
        else:
            arr = np.asarray(im.convert("RGB" if im.mode in _COLOUR_MODES else "L"))
            if im.mode in ("P", "PA") and (arr == arr[..., :1]).all():  # a grey palette
                arr = arr[..., 0]
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / scale


def _write_png(image: np.ndarray, path: Path, bits: int) -> None:
    """Grey as 8- or 16-bit (``L``/``I;16``), colour as 8-bit RGB (Pillow writes no 16-bit RGB PNG); marked as
    synthetic as the DICOM and NIfTI files are (:mod:`medgen.data.provenance`)."""
    from PIL import Image

    from medgen.data.provenance import synthetic_png_info

    top = 255 if bits == 8 else 65535
    arr = np.round(np.clip(image, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    with atomic_write(path) as f:
        Image.fromarray(arr).save(f, format="PNG", pnginfo=synthetic_png_info())


#: NIfTI RGB24 (datatype 128): the colour voxel type ITK/SimpleITK, 3D Slicer, ITK-SNAP and FSLeyes show as colour
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def _write_nifti(image: np.ndarray, path: Path, spacing: tuple[float, float]) -> None:
    """(H, W) -> float32 NIfTI, (H, W, 3) -> RGB24 NIfTI (8 bits a channel, as the sampler's PNGs), with x =
    columns, y = rows (as MONAI's readers index), pixdim = (col, row) spacing in mm."""
    import nibabel as nib

    affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])
    if image.ndim == 3:
        rgb = to_stored_rgb(image)
        data = np.empty(rgb.shape[:2], dtype=RGB24)
        data["R"], data["G"], data["B"] = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        nii = nib.Nifti1Image(np.ascontiguousarray(data.T[:, :, None]), affine)
    else:
        nii = nib.Nifti1Image(np.ascontiguousarray(image.T[:, :, None], dtype=np.float32), affine)
    nii.header.set_xyzt_units("mm")
    nii.header["descrip"] = b"synthetic image (medgen)"
    write_bytes_atomic(gzip.compress(nii.to_bytes(), mtime=0), path)


def output_name(rel: str, fmt: str) -> str:
    """Where a sample's export goes, relative to the output folder: its path with the format's suffix."""
    stem = PurePosixPath(rel.replace("\\", "/")).with_suffix("")
    return stem.with_name(stem.name + FORMATS[fmt]).as_posix()


def files_not_written(out_dir: Path, records: list[dict | None], fmt: str,
                      also_writes: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Files already in ``out_dir`` that exporting ``records`` to ``fmt`` would not write (its ``manifest.csv``, the
    send report ``send_report.csv`` or any ``also_writes``, lock and temporary files aside): what an earlier export of
    other samples left. A rerun of the same export, or of the folder after more sampling, writes every file there
    again."""
    if not out_dir.is_dir():
        return []
    planned = {output_name(rec["file"], fmt) for rec in records if rec and isinstance(rec.get("file"), str)}
    planned |= {MANIFEST, DEFAULT_SEND_REPORT}
    for path in also_writes:  # a report the command writes inside the folder, by its path there
        if Path(path).resolve().is_relative_to(out_dir.resolve()):
            planned.add(Path(path).resolve().relative_to(out_dir.resolve()).as_posix())
    found = []
    for folder, _, names in os.walk(out_dir):
        for name in names:
            rel = Path(folder, name).relative_to(out_dir).as_posix()
            if rel not in planned and not is_lock_file(name) and not is_temp_file(name):
                found.append(rel)
    return sorted(found)


def _record(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _samples_weights_meta(samples_dir: Path, records: list[dict | None]) -> dict | None:
    """The metadata of the weights named by ``samples.jsonl`` (their sidecar), or None."""
    if not any(r and r.get("checkpoint") for r in records):
        return None  # nothing to read (and no need to import torch)
    from medgen.networks.weights_meta import samples_meta

    try:
        return samples_meta(samples_dir)
    except (OSError, ValueError):
        return None


def _spacing_recorded(records: list[dict | None], weights_meta: dict | None) -> bool:
    keys = ("pixel_spacing", "source_pixel_spacing")
    sections = [r for r in records if r] + [weights_meta or {}, (weights_meta or {}).get("config") or {}]
    return any(section.get(k) for section in sections for k in keys)


def samples_channels(samples_dir: Path, records: list[dict | None], weights_meta: dict | None) -> int | None:
    """The channels of a samples folder: those its weights record, else those of its first readable image."""
    if weights_meta and weights_meta.get("channels") in (1, 3):
        return int(weights_meta["channels"])
    for rec in records:
        if rec and isinstance(rec.get("file"), str):
            try:
                return channels_of(load_sample_image(samples_dir, rec["file"]))
            except (OSError, ValueError):
                continue
    return None


def export_images(
    samples_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "dicom",
    iod: str | None = None,
    uid_root: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    bits: int = 16,
    body_part: str | None = None,
    pixel_spacing: float | tuple[float, float] | None = None,
    field_of_view_mm: float | tuple[float, float] | None = None,
    view_position: str | None = None,
    also_writes: Iterable[str | os.PathLike] = (),
) -> dict:
    """Export every image listed in ``samples_dir/samples.jsonl`` to ``out_dir`` and write ``manifest.csv``.

    One study and series per call, derived (like each SOPInstanceUID) from the weights sha256, the IOD and the
    UID root, so a second export of the same samples gives the same UIDs (a PACS updates instead of adding).
    Pixel spacing, body part and view come from the arguments, else from what the samples and the weights record
    (:mod:`medgen.export.acquisition`); unknown ones are left out. A bad line or missing image is reported and
    skipped; the rest go on. Colour samples (RGB PNGs, as the sampler writes them for 3 channels) stay RGB: DICOM
    ``sc`` or ``vlm`` (RGB, 8 bits), 8-bit RGB PNG, RGB24 NIfTI; a folder whose channels the IOD (or ``png16``) does
    not take is refused with one line before anything is written. Every path stays inside its folder
    (:mod:`medgen.export.paths`): a line whose ``file`` has ``..``, is absolute or leads through a symlink out of
    ``samples_dir``, or whose output would land outside ``out_dir``, is refused with one line naming it. Files are
    written through a temporary file and a rename, so an existing symlink in ``out_dir`` is replaced, never followed.
    ``iod`` None: ``sc`` for grey samples, ``vlm`` for colour. A folder holding files this export would not write
    (an earlier export of other samples; ``also_writes``: other files the caller writes there, such as a send
    report) is refused with one line before anything is written.
    Returns ``{"written": n, "errors": [(line, message)], "manifest": path, "files": [paths], "study": study}``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    samples_dir, out_dir = Path(samples_dir), Path(out_dir)
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"{samples_dir}: no such samples folder")
    index = samples_dir / "samples.jsonl"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no samples.jsonl (is {samples_dir} a sampler output folder?)")
    if pixel_spacing is not None or field_of_view_mm is not None:  # a bad value stops before anything is written
        resolve_spacing((1, 1), pixel_spacing=pixel_spacing, field_of_view_mm=field_of_view_mm)
    text = index.read_text()
    lines = text.splitlines()
    records = [_record(line) for line in lines]
    weights_sha = next((r["checkpoint_sha256"] for r in records if r and r.get("checkpoint_sha256")), None)
    weights_meta = _samples_weights_meta(samples_dir, records)
    channels = samples_channels(samples_dir, records, weights_meta)
    iod = iod or ("vlm" if channels == 3 else "sc")
    if fmt == "dicom" and channels:
        check_iod_channels(iod, channels, f"{index}: the samples are")
    if fmt == "png16" and channels == 3:
        raise ValueError(f"{index}: the samples are RGB colour, but --format png16 is grey only (16-bit PNG); give "
                         "--format png (8-bit RGB, as the samples are), dicom or nifti")
    bundle = (weights_meta or {}).get("bundle") or next((r["bundle"] for r in records if r and r.get("bundle")), None)
    acquisition = BUNDLE_ACQUISITION.get(str(bundle)) if bundle else None
    body_part = body_part or (acquisition.body_part if acquisition else None)
    view_position = view_position or (acquisition.view_position if acquisition else None)
    orientation = acquisition.patient_orientation if acquisition else None
    if fmt == "dicom" and iod == "mr" and pixel_spacing is None and field_of_view_mm is None \
            and not (acquisition and acquisition.field_of_view_mm) and not _spacing_recorded(records, weights_meta):
        raise ValueError(f"{index}: the samples record no pixel spacing and MR requires one; give "
                         "--field-of-view-mm (e.g. 240 for a head) or --pixel-spacing")
    def deleted(rec: dict | None) -> bool:  # the PNG is the image; a float copy left without it is not
        return bool(rec) and isinstance(rec.get("file"), str) and not (samples_dir / rec["file"]).is_file()

    leftovers = files_not_written(out_dir, [r for r in records if not deleted(r)], fmt, also_writes)
    if leftovers:
        raise ValueError(f"{out_dir} holds {len(leftovers)} file(s) this export does not write ({leftovers[0]}"
                         f"{', ...' if len(leftovers) > 1 else ''}), left by another export or of images since "
                         "deleted from the samples folder: they would be mixed "
                         "with these and sent with them; write to another folder (--out DIR) or move them away")
    study_key = f"weights:{weights_sha}" if weights_sha else f"samples:{hashlib.sha256(text.encode()).hexdigest()}"
    study = SyntheticStudy(uid_root=uid_root, patient_name=patient_name, patient_id=patient_id, key=study_key,
                           iod=iod)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, errors, files, left_out = [], [], [], []
    last_line = {r["file"]: n for n, r in enumerate(records, start=1) if r and isinstance(r.get("file"), str)}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rec = records[number - 1]
        if rec and isinstance(rec.get("file"), str) and last_line[rec["file"]] != number:
            continue  # the same image made again (its file deleted, then sampled anew): its later record is written
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "file" not in rec:
                raise ValueError('not a sample record (a JSON object with "file")')
            rel = rec["file"]
            if deleted(rec):  # a reviewer's reject: not exported, whether or not its float copy is still there
                left_out.append((number, f"{index}:{number}: {rel} is not in the samples folder (deleted): left out"))
                continue
            image = load_sample_image(samples_dir, rel)
            spacing = resolve_spacing(image.shape, pixel_spacing=pixel_spacing, field_of_view_mm=field_of_view_mm,
                                      record=rec, weights_meta=weights_meta, acquisition=acquisition)
            target = confined_path(out_dir, output_name(rel, fmt), "the output folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not inside(out_dir, target):  # a folder swapped for a symlink while being made
                raise UnsafePathError(rel, out_dir, f"its output folder leads to {resolved(target.parent)}")
            row = {"file": target.relative_to(out_dir).as_posix(), "source": rel, "line": number, "format": fmt}
            row.update({k: rec.get(k, "") for k in MANIFEST_COLUMNS if k not in row and k in rec})
            row["class"] = str(rec.get("class", rec.get("label", "")))
            if fmt == "dicom":
                provenance = {k: rec.get(k) for k in _PROVENANCE_KEYS}
                source = rec.get("checkpoint_sha256") or "pixels:" + hashlib.sha256(image.tobytes()).hexdigest()
                sop_uid = study.instance_uid(source, row["class"], rec.get("label"), rec.get("seed"),
                                             rec.get("sampler"), rec.get("steps"), rec.get("guidance_scale"), bits)
                write_dicom(
                    image,
                    target,
                    iod=iod,
                    study=study,
                    instance_number=len(files) + 1,
                    class_name=row["class"],
                    provenance=provenance,
                    body_part=body_part,
                    bits=bits,
                    pixel_spacing=spacing,
                    view_position=view_position,
                    patient_orientation=orientation,
                    sop_instance_uid=sop_uid,
                )
                row["sop_instance_uid"] = sop_uid
                row["series_instance_uid"] = study.series_instance_uid
                row["study_instance_uid"] = study.study_instance_uid
            elif fmt == "nifti":  # NIfTI always has a voxel size: 1 mm when nothing is known
                _write_nifti(image, target, spacing.values if spacing else (1.0, 1.0))
            else:
                _write_png(image, target, 8 if fmt == "png" else 16)
        except UnsafePathError as exc:
            errors.append((number, f"{index}:{number}: {exc}"))
            continue
        except Exception as exc:  # one bad sample must not stop the batch
            errors.append((number, f"{index}:{number}: {type(exc).__name__}: {exc}"))
            continue
        files.append(target)
        rows.append(row)
    manifest = out_dir / MANIFEST
    with atomic_write(manifest, "w") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return {"written": len(rows), "errors": errors, "left_out": left_out, "manifest": manifest, "files": files,
            "study": study}
