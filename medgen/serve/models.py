"""Request and response schemas of the REST API (pydantic); they are also the OpenAPI document at ``/docs``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATES = ("queued", "running")
MAX_SEED = 2**31 - 1
#: DICOM IODs and bit depths, as ``medgen export --iod/--bits`` accepts them (``vlm``: RGB colour only)
DICOM_IODS = ("sc", "cr", "mr", "vlm")
DICOM_BITS = (12, 16)


class GenerateRequest(BaseModel):
    """One generation job: ``num_images`` images of one class from one bundle.

    ``num_images`` and ``steps`` are also bounded by the server's limits (see ``GET /api/v1/models``). Numbers
    must be JSON numbers of the right kind and finite (``NaN``, ``Infinity`` and ``1e400`` are refused, as are
    ``true`` or ``"4"`` for an integer).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bundle: str = Field(min_length=1, max_length=100, examples=["cxr_ddpm"])
    class_label: str = Field(min_length=1, max_length=100, examples=["PNEUMONIA"])
    num_images: int = Field(default=4, ge=1, le=1024, strict=True)
    seed: int = Field(default=0, ge=0, le=MAX_SEED, strict=True, description="image k of the job uses seed + k")
    sampler: str | None = Field(default=None, max_length=32, description="one of the bundle's `samplers` "
                                "(GET /api/v1/models); default the bundle's own (its `defaults`, as its "
                                "inference.yaml samples)")
    steps: int | None = Field(default=None, ge=1, le=1000, strict=True,
                              description="denoising steps; default the bundle's (`defaults` in GET /api/v1/models)")
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0, strict=True,
                                         description="guidance scale, 1 = off; default the bundle's. Autoguidance "
                                         "where the bundle ships a guide for its weights, else classifier-free")
    output_format: Literal["png", "dicom", "nifti"] = "png"
    iod: Literal["sc", "cr", "mr", "vlm"] | None = Field(
        default=None, description="DICOM only, one of the model's `dicom_iods` (GET /api/v1/models), as `medgen "
        "export --iod`: grey models take Secondary Capture (`sc`, their default), Computed Radiography (`cr`) or MR "
        "Image (`mr`); colour (RGB) models take VL Microscopic Image (`vlm`, their default) or `sc`")
    bits: Literal[12, 16] | None = Field(
        default=None, description="DICOM of grey models only: BitsStored, 12 or 16 (the default), as `medgen export "
        "--bits`; colour DICOM is 8 bits a channel")
    field_of_view_mm: float | None = Field(
        default=None, gt=0, le=2000, strict=True, description="DICOM and NIfTI only: the images' field of view in "
        "mm, as `medgen export --field-of-view-mm`; by default the spacing the weights record or their bundle's "
        "nominal one (required for `mr` when neither is known)")
    quality_check: bool = Field(default=False, strict=True)

    @field_validator("steps", "guidance_scale", mode="before")
    @classmethod
    def left_out_not_null(cls, value: object) -> object:
        if value is None:  # runs only for a value sent: leaving the field out gives the bundle's default
            raise ValueError("must be a JSON number; leave it out for the bundle's default")
        return value

    @field_validator("bits", mode="before")
    @classmethod
    def bits_is_an_integer(cls, value: object) -> object:
        if value is not None and type(value) is not int:
            raise ValueError("bits must be the JSON integer 12 or 16")
        return value


class JobCreated(BaseModel):
    job_id: str
    status: JobState
    estimated_time_seconds: float
    status_url: str


class JobInfo(BaseModel):
    job_id: str
    status: JobState
    progress: float = Field(description="percent done, 0-100")
    request: dict[str, Any]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    retryable: bool = False
    cancel_requested: bool = False
    metrics: dict[str, Any] | None = None
    result_url: str | None = None
    images_url: str | None = None
    retry_of: str | None = None


class ImageInfo(BaseModel):
    index: int
    url: str
    class_label: str = Field(alias="class")
    seed: int

    model_config = ConfigDict(populate_by_name=True)


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    description: str | None = None
    available: bool = Field(default=True, description="false when the bundle cannot serve (see unavailable_reason)")
    unavailable_reason: str | None = None
    weights_sha256: str | None = Field(default=None, description="SHA-256 of the served weights file")
    classes: list[str]
    image_size: list[int]
    channels: int = Field(default=1, description="1: grey images; 3: RGB colour images")
    dicom_iods: list[str] = Field(default_factory=list, description="the `iod` values a DICOM job of this model "
                                  "takes (grey: sc, cr, mr; colour: sc, vlm)")
    samplers: list[str]
    defaults: dict[str, str | int | float | list[float] | None] = Field(
        default_factory=dict, description="sampler, steps and guidance_scale a job that leaves them out gets: the "
        "bundle's inference.yaml, as `medgen sample` uses them; guidance_interval: the noise levels [low, high] "
        "whose steps every job of this bundle guides (null: every step)")
    output_formats: list[str]
    quality_check: bool = Field(description="whether quality_check=true is available for this bundle")
    seconds_per_image_step: float | None = Field(
        default=None, description="measured seconds per image per network pass on this server (start-up "
        "calibration, then finished jobs), behind estimated_time_seconds; a step is one pass with DDIM and the "
        "solvers, two with a score bundle's predictor-corrector (pc)")


class ModelList(BaseModel):
    models: list[ModelInfo]
    limits: dict[str, int]
