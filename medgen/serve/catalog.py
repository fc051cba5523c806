"""The bundles a server offers: their classes and sizes read from ``configs/inference.yaml`` at start-up, and one
:class:`~medgen.diffusion.DiffusionPipeline` per bundle built from that same config on first use and kept loaded.

The config takes classes, image size and network from the served weights' own metadata (``model.json`` beside a
``model.pt``, see :mod:`medgen.networks.weights_meta`), so a bundle served with ``--ckpt`` of another run offers that
run's classes and size; weights without metadata fall back to the config's values.

A bundle whose config, weights file or network cannot be loaded (missing, truncated, corrupt, of another
network) is kept in the catalog as unavailable, with a one-line reason that names no server path; the service then
reports it in ``/api/v1/models`` and ``/healthz`` instead of failing."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgen.bundles import config_file, list_bundles
from medgen.serve.settings import BundleSpec

logger = logging.getLogger(__name__)

GATE_FILE = "quality_gate.npz"
DOMAIN_WEIGHTS_FILE = "domain_classifier.pt"


def discover_bundles() -> dict[str, BundleSpec]:
    """Bundles from :func:`medgen.bundles.list_bundles` that have trained weights (``models/model.pt``)."""
    return {p.name: BundleSpec(p.name, p) for p in list_bundles() if (p / "models" / "model.pt").is_file()}


def _parser(spec: BundleSpec, output_dir: str) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file(spec.path, "inference")))
    meta = spec.path / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser.update({"bundle_root": str(spec.path), "ckpt_path": str(spec.weights), "output_dir": output_dir,
                   **spec.overrides})
    return parser


@dataclass
class BundleInfo:
    """What a client may ask of a bundle, read without loading its weights."""

    spec: BundleSpec
    classes: list[str]
    image_size: list[int]
    version: str | None
    description: str | None
    weights_sha256: str | None = None
    problem: str | None = field(default=None)
    samplers: list[str] = field(default_factory=list)
    channels: int = 1
    defaults: dict[str, Any] = field(default_factory=dict)  # sampler, steps, guidance_scale of its inference.yaml
    _spacing_known: bool | None = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        """True when the bundle can serve (its config and weights loaded)."""
        return self.problem is None

    @property
    def gate_path(self) -> Path:
        return self.spec.weights.parent / GATE_FILE

    def quality_gate_problem(self) -> str | None:
        """Why ``quality_check`` cannot run for this bundle, or None when it can."""
        if not self.gate_path.is_file():
            return (f"quality_check needs a fitted quality gate at {self.spec.name}:models/{GATE_FILE} "
                    f"(make one with `medgen fit-gate DATALIST {GATE_FILE}`)")
        if self.gate_features() == "domain" and not (self.gate_path.parent / DOMAIN_WEIGHTS_FILE).is_file():
            return f"quality_check needs the gate's feature network at {self.spec.name}:models/{DOMAIN_WEIGHTS_FILE}"
        return None

    def pixel_spacing_known(self) -> bool:
        """Whether a DICOM export of this bundle's images has a pixel spacing without being given one: recorded in
        the weights' metadata, or the nominal field of view of the bundle that trained them (read once)."""
        if self._spacing_known is None:
            from medgen.export.acquisition import BUNDLE_ACQUISITION, resolve_spacing
            from medgen.networks.weights_meta import read_meta

            meta = read_meta(self.spec.weights, warn=False) or {}
            acquisition = BUNDLE_ACQUISITION.get(str(meta.get("bundle")))
            self._spacing_known = resolve_spacing(self.image_size, weights_meta=meta, acquisition=acquisition) \
                is not None
        return self._spacing_known

    def dicom_iods(self) -> list[str]:
        """The DICOM IODs this bundle's images fit: ``sc``/``cr``/``mr`` for grey, ``sc``/``vlm`` for RGB colour."""
        from medgen.export.dicom_writer import IOD_CHANNELS

        return [iod for iod, channels in IOD_CHANNELS.items() if self.channels in channels]

    def gate_features(self) -> str:
        sidecar = Path(str(self.gate_path) + ".json")
        return json.loads(sidecar.read_text()).get("features", "domain") if sidecar.is_file() else "domain"


def public_reason(err: BaseException, spec: BundleSpec) -> str:
    """``err`` in one line for API clients: server paths replaced by the bundle's name or the file's name. A
    wrapped error (MONAI's config evaluation wraps what the expression raised) is shown by its root cause."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain and len(chain) < 20:
        chain.append(nxt)
    err = next((e for e in chain if getattr(e, "reason", None)), chain[-1])
    if getattr(err, "reason", None):  # medgen.networks.weights_meta.WeightsFileError
        text = f"weights file {spec.weights.name}: {err.reason}" + (f" ({err.detail})" if err.detail else "")
        text += f"; {err.fix}" if getattr(err, "fix", "") else ""
    elif isinstance(err, FileNotFoundError) and not spec.weights.is_file():
        text = (f"weights file {spec.weights.name}: missing; train the bundle (medgen train) or give --ckpt, "
                "then restart the server")
    else:
        text = f"{type(err).__name__}: {err}"
    paths = {str(spec.weights): spec.weights.name, str(spec.weights.parent): "<weights folder>",
             str(spec.path): f"<bundle {spec.name}>"}
    for path in (spec.weights, spec.path):
        paths.setdefault(str(path.resolve()), paths[str(path)])
    for path, name in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def open_bundle(spec: BundleSpec, pipelines: PipelineCache | None = None) -> BundleInfo:
    """:func:`read_bundle`, the weights' SHA-256 and (with ``pipelines``) the pipeline built now; any failure
    gives an unavailable :class:`BundleInfo` with the reason, never an exception."""
    from medgen.networks.weights_meta import sha256_of

    try:
        info = read_bundle(spec)
    except Exception as err:  # any config or metadata problem makes just this bundle unavailable
        logger.error("bundle %s is unavailable: cannot read its config: %s", spec.name, err)
        return BundleInfo(spec, [], [], None, None, problem=f"config: {public_reason(err, spec)}")
    try:
        if not spec.weights.is_file():
            raise FileNotFoundError(f"no trained weights at {spec.weights}")
        info.weights_sha256 = sha256_of(spec.weights)
        if pipelines is not None:
            pipelines.bundles[spec.name] = info
            info.samplers = bundle_samplers(pipelines.get(spec.name), info.defaults.get("sampler"))
    except Exception as err:  # a weights file that does not load must not stop the other bundles
        logger.error("bundle %s is unavailable: %s", spec.name, err)
        info.problem = public_reason(err, spec)
    return info


def read_bundle(spec: BundleSpec) -> BundleInfo:
    """Classes, image size, channels (1 grey, 3 RGB; 1 when the config has no ``channels``) and metadata of
    ``spec``; raises with the file to fix when the config is unusable."""
    parser = _parser(spec, tempfile.gettempdir())
    classes = [str(c) for c in parser.get_parsed_content("classes")]
    size = parser.get_parsed_content("image_size")
    size = [int(size)] * 2 if isinstance(size, int) else [int(s) for s in size]
    channels = int(parser.get_parsed_content("channels")) if "channels" in parser else 1
    meta = json.loads((spec.path / "configs" / "metadata.json").read_text()) \
        if (spec.path / "configs" / "metadata.json").is_file() else {}
    return BundleInfo(spec, classes, size, meta.get("version"), meta.get("name") or meta.get("description"),
                      channels=channels, defaults=sampling_defaults(parser))


def sampling_defaults(parser: Any) -> dict[str, Any]:
    """The sampler, steps and guidance scale the bundle's ``inference.yaml`` samples with: what a job that leaves
    them out gets, so the service makes the images ``medgen sample`` and the bundle make; and its guidance interval
    (None: every step), which every job of the bundle samples with."""
    keys = {"sampler": ("sampler", str), "steps": ("num_inference_steps", int),
            "guidance_scale": ("guidance_scale", float)}
    out = {name: cast(parser.get_parsed_content(key)) for name, (key, cast) in keys.items() if key in parser}
    if "guidance_interval" in parser:
        interval = parser.get_parsed_content("guidance_interval")
        out["guidance_interval"] = None if interval is None else [float(v) for v in interval]
    return out


class PipelineCache:
    """One pipeline per bundle, built on first use from the bundle's ``pipeline`` config entry and then kept."""

    def __init__(self, bundles: dict[str, BundleInfo]) -> None:
        self.bundles = bundles
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pipelines)

    def get(self, name: str) -> Any:
        with self._lock:
            if name not in self._pipelines:
                spec = self.bundles[name].spec
                if not spec.weights.is_file():
                    raise FileNotFoundError(f"bundle {name}: no trained weights at {spec.weights}")
                logger.info("loading bundle %s from %s (weights %s)", name, spec.path, spec.weights)
                self._pipelines[name] = _parser(spec, tempfile.gettempdir()).get_parsed_content("pipeline")
            return self._pipelines[name]


def available_samplers() -> list[str]:
    """Sampler names the pipeline accepts (DDIM, DDPM and any fast solvers registered in medgen.diffusion)."""
    from medgen.diffusion.pipeline import SAMPLERS

    try:
        from medgen.diffusion.solvers import SOLVERS
    except ImportError:
        SOLVERS = {}
    return sorted({*SAMPLERS, *SOLVERS})


def bundle_samplers(pipeline: Any, preferred: str | None = None) -> list[str]:
    """The sampler names ``pipeline`` takes, the bundle's own first: a score bundle's Langevin pipeline has its own
    (``pc``, ``als``, ``reverse``), a DDPM bundle's takes :func:`available_samplers`, ``preferred`` (its
    ``inference.yaml``'s ``sampler``) first."""
    from medgen.diffusion.langevin import SAMPLERS as LANGEVIN_SAMPLERS
    from medgen.diffusion.langevin import LangevinPipeline

    if isinstance(pipeline, LangevinPipeline):
        names, first = list(LANGEVIN_SAMPLERS), pipeline.sampler
    else:
        names, first = available_samplers(), (preferred or "").lower()
    return [first, *(s for s in names if s != first)] if first in names else names


def output_formats() -> dict[str, str | None]:
    """Output format -> None when available, else why not."""
    formats: dict[str, str | None] = {"png": None}
    try:
        from medgen.export.dicom_writer import export_images  # noqa: F401
    except ImportError:
        formats["dicom"] = "output_format dicom needs medgen[dicom] (pip install 'medgen[dicom]')"
        formats["nifti"] = "output_format nifti needs medgen[dicom] (pip install 'medgen[dicom]')"
    else:
        formats["dicom"] = formats["nifti"] = None
    return formats
