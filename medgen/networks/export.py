"""Export a diffusion network to TorchScript (by tracing) and ONNX, with every input positional.

MONAI's ``DiffusionModelUNet`` takes ``(x, timesteps, context, class_labels, ...)`` with keywords and optional
arguments; tracers and ONNX want one flat positional signature, and ``torch.jit.script`` fails inside MONAI's
spatial attention (``x.reshape(*shape[:2], -1)``). :class:`DiffusionNetworkWrapper` gives the network the signature
``forward(image, timesteps, class_labels)``; :func:`export_torchscript` traces it and :func:`export_onnx` writes an
ONNX graph with a dynamic batch axis. :func:`export_bundle` does both for a bundle's trained weights.

``python -m monai.bundle ckpt_export`` cannot do this: it builds its example inputs as ``[torch.rand(input_shape)]``
(one float tensor) and overwrites any ``inputs`` given in ``converter_kwargs``, so a network that also needs integer
timesteps and class labels can neither be traced by it nor scripted.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medgen.fileio import atomic_write

INPUT_NAMES = ("image", "timesteps", "class_labels")
OUTPUT_NAMES = ("pred",)
DEFAULT_OPSET = 18


def _as_batch(value: Any, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a tensor on the image's device with one entry per image (an int or 0-d tensor is repeated)."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=dtype, device=image.device)
    if value.ndim == 0:
        value = value.expand(image.shape[0])
    return value


class DiffusionNetworkWrapper(nn.Module):
    """A diffusion network with the positional signature ``forward(image, timesteps, class_labels)``.

    ``timesteps`` and ``class_labels`` may be tensors of shape ``(N,)``, 0-d tensors or plain ints (repeated over
    the batch), so ``python -m monai.bundle verify_net_in_out network_wrapper --extra_forward_args
    "{'timesteps': 999, 'class_labels': 0}"`` works from the command line. ``class_labels=None`` is passed on as
    ``None`` (the null class of :class:`~medgen.networks.ConditionalDiffusionUNet`).

    The wrapper loads a plain network's state dict (keys without the ``network.`` prefix), so ``ckpt_export``
    and :func:`~medgen.diffusion.sample_run.load_weights` can load ``models/model.pt`` into it directly.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(
        self, image: torch.Tensor, timesteps: torch.Tensor | int, class_labels: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        timesteps = _as_batch(timesteps, image, torch.long)
        if class_labels is not None:
            class_labels = _as_batch(class_labels, image, torch.long)
        return self.network(image, timesteps, class_labels=class_labels)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if not any(key.startswith("network.") for key in state_dict):
            return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def wrap(network: nn.Module) -> DiffusionNetworkWrapper:
    return network if isinstance(network, DiffusionNetworkWrapper) else DiffusionNetworkWrapper(network)


def example_inputs(
    image_shape: Sequence[int], batch_size: int = 2, num_train_timesteps: int = 1000, num_labels: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(image, timesteps, class_labels)`` for an image of shape ``(C, *spatial)``."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, *image_shape, generator=gen)
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen)
    labels = torch.randint(0, num_labels, (batch_size,), generator=gen)
    return image, timesteps, labels


def metadata_inputs(
    network_data_format: Mapping[str, Any], batch_size: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs named and shaped as ``network_data_format["inputs"]`` declares them, ``image`` first.

    An input of shape ``(batch, num_channels, *spatial_shape)`` (no channel axis when ``num_channels`` is 0),
    with the declared dtype, drawn uniformly from ``value_range`` (``[0, 1)`` when the range is empty).
    """
    from monai.utils import get_equivalent_dtype

    gen = torch.Generator().manual_seed(seed)
    specs = dict(network_data_format["inputs"])
    out: dict[str, torch.Tensor] = {}
    for name in ["image", *[k for k in specs if k != "image"]]:
        spec = specs[name]
        channels = int(spec.get("num_channels", 0))
        shape = (batch_size, *([channels] if channels else []), *[int(s) for s in spec.get("spatial_shape", [])])
        dtype = get_equivalent_dtype(spec.get("dtype", "float32"), data_type=torch.Tensor)
        value_range = spec.get("value_range") or [0, 1]
        low, high = float(value_range[0]), float(value_range[-1])
        if dtype.is_floating_point:
            out[name] = (low + (high - low) * torch.rand(shape, generator=gen)).to(dtype)
        else:
            out[name] = torch.randint(int(low), int(high) + 1, shape, generator=gen).to(dtype)
    return out


def export_torchscript(
    network: nn.Module,
    path: str | Path,
    inputs: Sequence[torch.Tensor],
    meta_values: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> torch.jit.ScriptModule:
    """Trace ``network`` (wrapped) on ``inputs`` and save it the way ``ckpt_export`` does (metadata and configs
    as extra files, readable with ``monai.data.load_net_with_metadata``)."""
    from monai.data import save_net_with_metadata

    model = wrap(network).eval().cpu()
    with torch.no_grad():
        traced = torch.jit.trace(model, tuple(t.cpu() for t in inputs), check_trace=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # an export that fails leaves an earlier file at ``path`` as it was
        save_net_with_metadata(traced, f, include_config_vals=False, append_timestamp=False,
                               meta_values=dict(meta_values or {}), more_extra_files=dict(extra_files or {}))
    return traced


def export_onnx(
    network: nn.Module,
    path: str | Path,
    inputs: Sequence[torch.Tensor],
    opset_version: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
    input_names: Sequence[str] = INPUT_NAMES,
) -> Path:
    """Write ``network`` (wrapped) as one ONNX file with inputs ``input_names`` (default ``image, timesteps,
    class_labels``), output ``pred`` and a dynamic batch axis. ``metadata`` goes into the model's
    ``metadata_props`` (non-strings as JSON)."""
    if opset_version < 17:
        raise ValueError(f"opset_version must be at least 17, got {opset_version}")
    model = wrap(network).eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in inputs)

    def export(target: str) -> None:
        with torch.no_grad():
            torch.onnx.export(model, tuple(t.cpu() for t in inputs), target, input_names=list(input_names),
                              output_names=list(OUTPUT_NAMES), opset_version=opset_version, dynamo=True,
                              external_data=False, dynamic_shapes=dynamic_shapes, verbose=False)

    return save_onnx(export, Path(path), metadata or {})


def save_onnx(export: Callable[[str], None], path: Path, metadata: Mapping[str, Any]) -> Path:
    """``export(file)`` (a ``torch.onnx.export``) into a scratch folder, ``metadata`` added to the model's
    ``metadata_props`` (non-strings as JSON), then the file put at ``path`` through :func:`atomic_write`: an export
    that fails leaves an earlier file at ``path`` as it was."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medgen-onnx-") as scratch:
        export(str(Path(scratch) / path.name))
        proto = onnx.load(str(Path(scratch) / path.name))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())  # one file, as external_data=False asks (under 2 GB)
    return path


def max_abs_diff_torchscript(path: str | Path, network: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest ``|TorchScript - PyTorch|`` over the outputs for ``inputs``."""
    ts = torch.jit.load(str(path))
    with torch.no_grad():
        return float((ts(*inputs) - wrap(network).eval()(*inputs)).abs().max())


def max_abs_diff_onnx(path: str | Path, network: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over the outputs for ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    out = session.run(None, feeds)[0]
    with torch.no_grad():
        ref = wrap(network).eval()(*inputs).numpy()
    return float(np.abs(out - ref).max())


def sampling_metadata(scheduler: Any, classes: Sequence[str], image_shape: Sequence[int]) -> dict[str, Any]:
    """What :mod:`medgen.onnx_sampling` needs to sample from the ONNX file alone: the noise schedule, the
    prediction type, the classes (index = label, null class = ``len(classes)``) and the image shape."""
    return {
        "medgen.betas": [float(b) for b in scheduler.betas.double().tolist()],
        "medgen.num_train_timesteps": int(scheduler.num_train_timesteps),
        "medgen.prediction_type": str(scheduler.prediction_type),
        "medgen.classes": list(classes),
        "medgen.null_class": len(classes),
        "medgen.image_shape": [int(s) for s in image_shape],
    }


def weights_source(ckpt: Path) -> dict[str, str]:
    """What an exported file records of the weights it was made from: their file name and sha256."""
    from medgen.networks.weights_meta import sha256_of

    return {"medgen.weights_file": ckpt.name, "medgen.weights_sha256": sha256_of(ckpt)}


def export_bundle(
    bundle: str | Path,
    ckpt_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = ("ts", "onnx"),
    config: str = "inference",
    opset_version: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export a bundle's trained network as ``model.ts`` and ``model.onnx`` beside its weights and check each
    against PyTorch on random inputs made from ``network_data_format`` (batch sizes 2 and 3). Weights trained with EDM
    preconditioning are exported with it, so the exported network predicts epsilon like every other one. Each file
    names the weights it was made from (``medgen.weights_file``, ``medgen.weights_sha256``: TorchScript metadata,
    ONNX ``metadata_props``), so an export left beside other weights can be told apart; each is written through a
    temporary file, so a failed export leaves an earlier one as it was.

    Returns ``{"model.ts": path, "model.ts max_abs_diff": ..., "model.onnx": path, "model.onnx max_abs_diff": ...}``.

    Args:
        bundle: bundle folder or name.
        ckpt_file: weights (default ``<bundle>/models/model.pt``).
        out_dir: where to write (default: the weights' folder, ``<bundle>/models`` for the bundle's own).
        formats: any of ``ts``, ``onnx``.
        config: the config whose ``network_def`` (and ``scheduler``, ``classes``) are used.
        opset_version: ONNX opset (at least 17).
    """
    from monai.bundle import ConfigParser

    from medgen.bundles import config_file, find_bundle
    from medgen.diffusion.sample_run import load_weights

    unknown = set(formats) - {"ts", "onnx"}
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from ts, onnx")
    bundle_dir = find_bundle(bundle)
    cfg_path = config_file(bundle_dir, config)
    meta_path = bundle_dir / "configs" / "metadata.json"
    ckpt = Path(ckpt_file) if ckpt_file else bundle_dir / "models" / "model.pt"
    out = Path(out_dir) if out_dir else ckpt.parent  # never beside other weights than these
    source = weights_source(ckpt)
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser.read_meta(str(meta_path))
    parser["bundle_root"] = str(bundle_dir)
    if "ckpt_path" in parser:  # the weights' metadata (and a latent bundle's autoencoder) are read beside them
        parser["ckpt_path"] = str(ckpt)
    network = load_weights(parser.get_parsed_content("network_def"), ckpt).float().eval()
    if "preconditioning" in parser and "scheduler" in parser:  # an EDM-trained network is exported predicting
        from medgen.diffusion.objectives import for_sampling  # epsilon, as every sampler (and onnx_sampling) reads it

        network = for_sampling(network, parser.get_parsed_content("scheduler"),
                               parser.get_parsed_content("preconditioning"),
                               parser.get_parsed_content("edm_sigma_data", default=0.5)).eval()
    data_format = parser["_meta_"]["network_data_format"]
    image = data_format["inputs"]["image"]
    image_shape = (int(image["num_channels"]), *[int(s) for s in image["spatial_shape"]])
    classes = list(parser.get_parsed_content("classes", default=[]))
    named = metadata_inputs(data_format, batch_size=2)
    inputs = tuple(named.values())
    check = tuple(metadata_inputs(data_format, batch_size=3, seed=1).values())
    result: dict[str, Any] = {}
    if "ts" in formats:
        extra = {f"{cfg_path.stem}.json": json.dumps(ConfigParser.load_config_file(str(cfg_path))).encode()}
        ts_path = out / "model.ts"
        export_torchscript(network, ts_path, inputs, {**parser.get("_meta_"), **source}, extra)
        result["model.ts"] = str(ts_path)
        result["model.ts max_abs_diff"] = max_abs_diff_torchscript(ts_path, network, check)
    if "onnx" in formats:
        metadata: dict[str, Any] = {"medgen.bundle": bundle_dir.name,
                                    "medgen.version": parser["_meta_"].get("version", ""), **source}
        if "scheduler" in parser and hasattr(parser.get_parsed_content("scheduler"), "betas"):
            metadata.update(sampling_metadata(parser.get_parsed_content("scheduler"), classes, image_shape))
        onnx_path = export_onnx(network, out / "model.onnx", inputs, opset_version, metadata, list(named))
        result["model.onnx"] = str(onnx_path)
        result["model.onnx max_abs_diff"] = max_abs_diff_onnx(onnx_path, network, check)
    weights_meta = parser.get_parsed_content("weights_meta", default=None) if "weights_meta" in parser else None
    if (weights_meta or {}).get("config", {}).get("route") == "latent":  # and the decoder, the second network
        from medgen.latent.export import export_decoder

        result.update(export_decoder(parser.get_parsed_content("autoencoder"), weights_meta["config"]["scale_factor"],
                                     weights_meta["config"]["latent_shape"], out, formats, weights_meta,
                                     opset_version))
    return result
