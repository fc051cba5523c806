"""Self-describing weights: what a set of trained weights is (classes, image size, channels, network and scheduler
config, a fingerprint of its training data, the medgen version), built, written, read and compared.

Where it lives:

- training checkpoints carry it inside, as the entry ``"medgen_meta"`` beside ``model``/``ema``/``optimizer``
  (a :class:`WeightsMeta` in ``CheckpointSaver``'s ``save_dict``; a plain dict, so ``torch.load(weights_only=True)``
  reads it);
- ``model.pt`` stays a plain state dict (MONAI's ``monai.bundle.load``, ``CheckpointLoader`` and any
  ``net.load_state_dict(torch.load(...))`` load it strictly, and the shipped file's hash does not change); its
  metadata is the sidecar ``model.json`` beside it, which records the sha256 of the weights it describes so a
  sidecar left beside other weights is noticed and ignored.

MONAI's bundle format keeps such facts in ``configs/metadata.json`` per bundle, not per weights file; this module is
the gap: one record per weights file, read by inference, evaluation and the service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

META_KEY = "medgen_meta"
FORMAT = "medgen.weights_meta/1"
# what must agree for a checkpoint to be resumed by a run
FINGERPRINT_KEYS = ("datalist_sha256", "classes", "image_size", "channels", "network", "scheduler")
# how training prepared its images (also how evaluation prepares real ones): part of the fingerprint
PREPROCESSING_KEYS = ("resize_mode", "window", "window_preset")
# the latents a latent diffusion model was trained on (its config, medgen.latent): part of the fingerprint when present
LATENT_FINGERPRINT_KEYS = ("autoencoder_sha256", "scale_factor", "latent_shape")
_SCHEDULER_FIELDS = ("num_train_timesteps", "prediction_type", "sigma_max", "sigma_min", "clip_sample",
                     "variance_type")
_warned: set[str] = set()


class WeightsFileError(ValueError):
    """A weights file that cannot be used, in one line: ``"<path>: <reason> (<detail>); <fix>"``.

    ``reason`` is one of :data:`WEIGHTS_PROBLEMS`; ``path``, ``reason`` and ``detail`` are kept for callers that
    show them (the service's ``/models`` and ``/healthz``). Raised by
    :func:`medgen.diffusion.sample_run.check_weights_file` and :func:`~medgen.diffusion.sample_run.load_weights`.
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "", fix: str = "") -> None:
        self.path, self.reason, self.detail, self.fix = Path(path), reason, detail, fix
        text = f"{path}: {reason}" + (f" ({detail})" if detail else "") + (f"; {fix}" if fix else "")
        super().__init__(" ".join(text.split()))


class MissingWeightsError(WeightsFileError, FileNotFoundError):
    """No file at the weights path (also a ``FileNotFoundError``)."""


#: the ``reason`` values of :class:`WeightsFileError`
WEIGHTS_PROBLEMS = ("missing", "truncated or damaged", "not a PyTorch weights file", "weights of another network")


def plain(value: Any) -> Any:
    """``value`` as JSON types (tuples as lists, paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def datalist_fingerprint(datalist: Mapping[str, Any]) -> str:
    """sha256 of the training items (image path and label, in a fixed order) and the class list."""
    items = sorted((str(it.get("image")), plain(it.get("label"))) for it in datalist.get("training", []))
    payload = json.dumps({"classes": plain(datalist.get("classes")), "training": items}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def network_config(network: torch.nn.Module) -> dict[str, Any]:
    """``{"_target_": class path, **constructor arguments}`` of a medgen network (unwrapping DDP)."""
    network = getattr(network, "module", network)
    cls = type(network)
    args = getattr(network, "init_args", None)
    config: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    if args is None:  # a network that does not record its arguments: its parameter shapes stand for them
        shapes = [[k, list(v.shape)] for k, v in network.state_dict().items()]
        config["state_dict_shapes_sha256"] = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()
        return config
    return {**config, **plain(dict(args))}


def _sig(x: float) -> float:
    return float(f"{float(x):.6g}")


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """Class path, the scalar settings of the training noise schedule, and its first, middle and last values."""
    cls = type(scheduler)
    config: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    for name in _SCHEDULER_FIELDS:
        value = getattr(scheduler, name, None)
        if isinstance(value, (int, float, str, bool)):
            config[name] = value
    for name in ("betas", "sigmas"):
        table = getattr(scheduler, name, None)
        if isinstance(table, torch.Tensor) and table.numel():
            config[name] = [_sig(table[0]), _sig(table[len(table) // 2]), _sig(table[-1])]
    return config


def build_meta(classes: Sequence[str], image_size: int | Sequence[int], channels: int, network: torch.nn.Module,
               scheduler: Any, datalist: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
               bundle: str | None = None) -> dict[str, Any]:
    """The metadata of weights trained with these settings (JSON types only).

    ``config`` holds the bundle keys that inference takes from the weights (``unet_channels``, ``sigma_max``, ...)
    under their bundle names.
    """
    from medgen import __version__

    sched = scheduler_config(scheduler)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "bundle": bundle,
        "classes": [str(c) for c in classes],
        "image_size": plain(image_size),
        "channels": int(channels),
        "network": network_config(network),
        "scheduler": sched,
        "prediction_type": sched.get("prediction_type"),
        "config": plain(dict(config or {})),
        "datalist_sha256": datalist_fingerprint(datalist) if datalist is not None else None,
        "num_training_items": len(datalist.get("training", [])) if datalist is not None else None,
        "medgen_version": __version__,
    }
    if "sigma_max" in sched:
        meta["sigmas"] = {k: sched[k] for k in ("sigma_max", "sigma_min", "num_train_timesteps") if k in sched}
    return meta


class WeightsMeta:
    """The metadata of the weights a training run writes, as a component a bundle config builds once.

    It has ``state_dict``/``load_state_dict``, so it rides in ``CheckpointSaver``'s ``save_dict`` and every
    checkpoint carries it under ``"medgen_meta"``. Arguments are those of :func:`build_meta`.
    """

    def __init__(self, classes: Sequence[str], image_size: int | Sequence[int], channels: int,
                 network: torch.nn.Module, scheduler: Any, datalist: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, bundle: str | None = None) -> None:
        self.meta = build_meta(classes, image_size, channels, network, scheduler, datalist, config, bundle)

    def state_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.meta))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the run's own metadata stands (resume compared them first)."""

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.meta)


def fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``meta`` that must match for a checkpoint to be resumed: :data:`FINGERPRINT_KEYS`, how
    images were prepared (:data:`PREPROCESSING_KEYS` of its ``config``) and, where its ``config`` has them, the
    output preconditioning and the latents (:data:`LATENT_FINGERPRINT_KEYS`)."""
    config = meta.get("config") or {}
    out = {**{k: meta.get(k) for k in FINGERPRINT_KEYS},
           "preprocessing": {k: config.get(k) for k in PREPROCESSING_KEYS}}
    if (config.get("preconditioning") or "none") != "none":  # what the network's output means
        out["preconditioning"] = {k: config.get(k) for k in ("preconditioning", "edm_sigma_data")}
    out.update({k: config[k] for k in LATENT_FINGERPRINT_KEYS if config.get(k) is not None})  # whose latents
    return out


def differences(found: Mapping[str, Any], wanted: Mapping[str, Any], keys: Sequence[str] | None = None,
                labels: tuple[str, str] = ("found", "wanted")) -> list[str]:
    """``"key A (found) vs B (wanted)"`` for each key whose values differ; nested dicts name the inner keys."""
    out = []
    for key in keys if keys is not None else sorted(set(found) | set(wanted)):
        a, b = plain(found.get(key)), plain(wanted.get(key))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{key}.{d}" for d in differences(a, b, labels=labels))
        elif key == "datalist_sha256":
            out.append("training data (datalist hash)")
        else:
            out.append(f"{key} {_short(a)} ({labels[0]}) vs {_short(b)} ({labels[1]})")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sidecar_path(weights: str | Path) -> Path:
    """``model.pt`` -> ``model.json`` beside it."""
    return Path(weights).with_suffix(".json")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """JSON through :mod:`medgen.fileio` (temporary file, fsync, rename; a full disk leaves the old file)."""
    from medgen.fileio import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(json.dumps(plain(data), indent=1) + "\n", path)


def write_sidecar(weights: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``meta`` as the sidecar of ``weights`` (with the weights' sha256 and the time written)."""
    record = {**plain(dict(meta)), "weights_file": Path(weights).name, "weights_sha256": sha256_of(weights),
              "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return write_json_atomic(record, sidecar_path(weights))


def read_meta(weights: str | Path | None, warn: bool = True) -> dict[str, Any] | None:
    """The metadata of a weights file: its sidecar JSON, or the ``"medgen_meta"`` entry of a checkpoint.

    None (with a warning) for weights that carry none, or whose sidecar describes other weights; None without a
    warning when the file does not exist (loading it reports that).
    """
    if not weights:
        return None
    path = Path(weights)
    if not path.is_file():
        return None
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as err:
            _warn(path, f"its metadata {side} cannot be read ({err}); using the config's values")
            return None
        if meta.get("weights_sha256") not in (None, sha256_of(path)):
            _warn(path, f"{side} describes other weights (sha256 differs); using the config's values")
            return None
        return meta
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader that needs it
        return None
    meta = ckpt.get(META_KEY) if isinstance(ckpt, dict) else None
    if meta is None and warn:
        _warn(path, "carries no metadata (classes, image size, network); using the config's values")
    return dict(meta) if meta is not None else None


def _warn(path: Path, message: str) -> None:
    key = f"{path}:{message}"
    if key not in _warned:
        _warned.add(key)
        logger.warning("weights %s %s", path, message)


def meta_value(meta: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """``key`` of the weights' metadata (its ``config`` section first, then the top level; ``a.b`` looks inside),
    else ``default``. Bundle configs use it so that keys default to what the weights were trained with."""
    if not meta:
        return default
    for section in (meta.get("config") or {}, meta):
        node: Any = section
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return node
    return default


def check_against(meta: Mapping[str, Any] | None, wanted: Mapping[str, Any], weights: str | Path,
                  network: torch.nn.Module | None = None) -> None:
    """Stop with one line when a config value (``wanted``, by bundle key) or the built ``network`` disagrees with
    the weights' metadata; nothing to check when the weights carry none."""
    if not meta:
        return
    from medgen.config import fail

    labels = ("weights", "config")
    found = {key: meta_value(meta, key) for key in wanted if meta_value(meta, key) is not None}
    diffs = differences(found, {k: wanted[k] for k in found}, keys=list(found), labels=labels)
    if network is not None and isinstance(meta.get("network"), dict):
        diffs += [f"network {d}" for d in differences(meta["network"], network_config(network), labels=labels)]
    if diffs:
        fail(f"the weights {weights} were trained with other settings: {'; '.join(diffs)}; drop the conflicting "
             "overrides (the weights' metadata supplies them) or give other weights")


def samples_meta(samples_dir: str | Path) -> dict[str, Any] | None:
    """The metadata of the weights that made a samples folder (its ``samples.jsonl`` names them), or None."""
    index = Path(samples_dir) / "samples.jsonl"
    if not index.is_file():
        return None
    for line in index.read_text().splitlines():
        try:
            checkpoint = json.loads(line).get("checkpoint")
        except json.JSONDecodeError:
            continue
        if checkpoint:
            return read_meta(checkpoint, warn=False)
    return None


def image_size_of(meta: Mapping[str, Any] | None, default: int) -> int:
    """The (square) image size the weights were trained at, else ``default``."""
    size = meta_value(meta, "image_size", default)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def run_datalist(samples_dir: str | Path) -> str:
    """``datalist.json`` of the training run whose weights made a samples folder (beside its ``model.pt``, or
    above its ``checkpoints/``); stops with one line when there is none."""
    from medgen.config import fail

    index = Path(samples_dir) / "samples.jsonl"
    lines = index.read_text().splitlines() if index.is_file() else []
    checkpoint = next((json.loads(x).get("checkpoint") for x in lines if x.strip().startswith("{")), None)
    if checkpoint:
        for folder in (Path(checkpoint).parent, Path(checkpoint).parent.parent):
            if (folder / "datalist.json").is_file():
                return str(folder / "datalist.json")
    fail(f"no training datalist found for the samples in {samples_dir} (none beside the weights that made them): "
         "pass --datalist <datalist.json>")
    raise AssertionError  # unreachable: fail() raises
