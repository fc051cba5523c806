"""A small pydicom-built Secondary Capture file, for tests that need DICOM input made from known pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_file(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
               slope: str | None = None, truncate: bool = False, modality: str = "OT",
               header: dict[str, str] | None = None) -> None:
    """A Secondary Capture DICOM of 16-bit ``pixels`` (None: no PixelData) with optional RescaleSlope; ``header``
    sets further elements by keyword (e.g. ``{"PatientName": "DOE^JANE"}``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "CORPUS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    shape = pixels.shape if pixels is not None else (64, 64)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.add_new((0x0028, 0x1053), "DS", slope)
        ds.add_new((0x0028, 0x1052), "DS", "0")
    for keyword, value in (header or {}).items():
        setattr(ds, keyword, value)
    if pixels is not None:
        data = pixels.astype(np.uint16).tobytes()
        ds.PixelData = data[: len(data) // 3] if truncate else data
    with pydicom.config.disable_value_validation():
        ds.save_as(path, enforce_file_format=True)
