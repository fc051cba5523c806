"""What an exported image claims about its acquisition: pixel spacing (and where it came from), body part, view.

A generated image has no acquisition of its own; what it can truthfully carry is what its training images were.
The pixel spacing of an image ``size`` pixels wide is the training source's field of view over ``size``:
``source_pixel_spacing * source_size / size``. Sources that carry no spacing (JPEG/PNG sets such as Kermany's
chest films) get a documented nominal field of view per bundle. Where nothing is known the value is left out
(never a made-up 1.0 mm), except for MR, whose PixelSpacing is required: there the export asks for one.

Precedence for each image: the caller's ``pixel_spacing``, the caller's ``field_of_view_mm``, the
``samples.jsonl`` line (``pixel_spacing``, or ``source_pixel_spacing`` with ``source_size``), the weights'
metadata (the same keys), then :data:`BUNDLE_ACQUISITION` for the bundle that made the weights.

pydicom has no notion of this; the module is the gap between the sampler's records and the DICOM attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BUNDLE_ACQUISITION", "Acquisition", "Spacing", "resolve_spacing"]


@dataclass(frozen=True)
class Acquisition:
    """What a bundle's training images were: ``field_of_view_mm`` (rows, columns) and the anatomy/view terms."""

    source: str
    field_of_view_mm: tuple[float, float] | None = None
    body_part: str | None = None
    view_position: str | None = None
    patient_orientation: tuple[str, str] | None = None


#: per bundle (the ``bundle`` of the weights' metadata): what its training source is
BUNDLE_ACQUISITION: dict[str, Acquisition] = {
    "cxr_ddpm": Acquisition(
        source="Kermany 2018 paediatric (1-5 years) anterior-posterior chest films, JPEG without pixel spacing; "
        "nominal field of view 300 mm, the 24 x 30 cm cassette of a child's chest film",
        field_of_view_mm=(300.0, 300.0),
        body_part="CHEST",
        view_position="AP",
        patient_orientation=("L", "F"),
    ),
    "brain_mri_score": Acquisition(
        source="Nickparvar brain tumour MRI slices (axial, coronal and sagittal), JPEG without pixel spacing; "
        "nominal field of view 240 mm, a usual head MR field of view",
        field_of_view_mm=(240.0, 240.0),
        body_part="HEAD",
    ),
}


@dataclass(frozen=True)
class Spacing:
    """(row, column) spacing in mm and one line saying where it came from."""

    row: float
    column: float
    source: str

    @property
    def values(self) -> tuple[float, float]:
        return (self.row, self.column)

    def describe(self, shape: Sequence[int]) -> str:
        return f"{self.row:g}\\{self.column:g} mm over {shape[0]}x{shape[1]} px, {self.source}"


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        values = [float(value)] * 2 if isinstance(value, (int, float, str)) else [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    values = values * 2 if len(values) == 1 else values
    if len(values) != 2 or not all(v > 0 for v in values):
        raise ValueError(f"{name} must be one or two positive numbers in mm (rows, columns), got {value!r}")
    return values[0], values[1]


def _from_record(record: Mapping[str, Any], shape: Sequence[int], where: str) -> Spacing | None:
    if record.get("pixel_spacing"):
        return Spacing(*_pair(record["pixel_spacing"], f"{where} pixel_spacing"), f"recorded in {where}")
    if record.get("source_pixel_spacing") and record.get("source_size"):
        src = _pair(record["source_pixel_spacing"], f"{where} source_pixel_spacing")
        size = _pair(record["source_size"], f"{where} source_size")
        return Spacing(src[0] * size[0] / shape[0], src[1] * size[1] / shape[1],
                       f"source spacing {src[0]:g}\\{src[1]:g} mm x source size {size[0]:g}x{size[1]:g} / image "
                       f"size ({where})")
    return None


def resolve_spacing(
    shape: Sequence[int],
    *,
    pixel_spacing: float | Sequence[float] | None = None,
    field_of_view_mm: float | Sequence[float] | None = None,
    record: Mapping[str, Any] | None = None,
    weights_meta: Mapping[str, Any] | None = None,
    acquisition: Acquisition | None = None,
) -> Spacing | None:
    """The pixel spacing of an image of ``shape`` (rows, columns) and its origin, or None when nothing is known."""
    if pixel_spacing is not None:
        return Spacing(*_pair(pixel_spacing, "pixel spacing"), "given by the user (--pixel-spacing)")
    if field_of_view_mm is not None:
        fov = _pair(field_of_view_mm, "field of view")
        return Spacing(fov[0] / shape[0], fov[1] / shape[1],
                       f"nominal field of view {fov[0]:g}x{fov[1]:g} mm given by the user (--field-of-view-mm)")
    found = _from_record(record or {}, shape, "samples.jsonl")
    if found is None and weights_meta:
        section = {**weights_meta, **(weights_meta.get("config") or {})}
        found = _from_record(section, shape, "the weights' metadata")
    if found is not None:
        return found
    if acquisition is not None and acquisition.field_of_view_mm:
        fov = acquisition.field_of_view_mm
        return Spacing(fov[0] / shape[0], fov[1] / shape[1], f"nominal: {acquisition.source}")
    return None
