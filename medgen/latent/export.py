"""The latent bundle's second network for deployment: the autoencoder's decoder as TorchScript and ONNX.

``medgen export-model`` writes the diffusion UNet as ``model.ts`` / ``model.onnx`` for every bundle; for a latent
bundle it also writes ``model_decoder.ts`` / ``model_decoder.onnx``: scaled latents (what the sampler ends with)
in, images in [-1, 1] out, i.e. ``decode_stage_2_outputs(z / scale_factor)`` clipped, as
:meth:`medgen.latent.pipeline.LatentDecoding.finish` does. Each file is checked against PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.fileio import atomic_write

DECODER_INPUTS = ("latent",)
DECODER_OUTPUTS = ("image",)


class ScaledLatentDecoder(torch.nn.Module):
    """Scaled latents ``(B, C, h, w)`` -> images ``(B, channels, H, W)`` in [-1, 1]."""

    def __init__(self, autoencoder: torch.nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.autoencoder = autoencoder.float().eval()
        self.scale_factor = float(scale_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(latent / self.scale_factor).clamp(-1.0, 1.0)


def export_decoder(autoencoder: torch.nn.Module, scale_factor: float, latent_shape: Sequence[int], out_dir: Path,
                   formats: Sequence[str], meta: dict[str, Any], opset_version: int) -> dict[str, Any]:
    """Write ``model_decoder.ts`` / ``model_decoder.onnx`` in ``out_dir``; returns paths and max |diff| to PyTorch."""
    decoder = ScaledLatentDecoder(autoencoder, scale_factor)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *latent_shape, generator=gen)
    check = torch.randn(3, *latent_shape, generator=gen)
    with torch.no_grad():
        reference = decoder(check)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {"medgen.scale_factor": float(scale_factor), "medgen.latent_shape": [int(s) for s in latent_shape],
             "medgen.autoencoder_sha256": meta.get("config", {}).get("autoencoder_sha256")}
    result: dict[str, Any] = {}
    if "ts" in formats:
        from monai.data import save_net_with_metadata

        path = out_dir / "model_decoder.ts"
        with torch.no_grad():
            traced = torch.jit.trace(decoder, (example,), check_trace=False)
        with atomic_write(path) as f:
            save_net_with_metadata(traced, f, include_config_vals=False, append_timestamp=False,
                                   meta_values={k: json.dumps(v) for k, v in facts.items()})
        with torch.no_grad():
            result["model_decoder.ts"] = str(path)
            result["model_decoder.ts max_abs_diff"] = float((torch.jit.load(str(path))(check) - reference).abs().max())
    if "onnx" in formats:
        import onnxruntime as ort

        from medgen.networks.export import save_onnx

        path = out_dir / "model_decoder.onnx"
        batch = torch.export.Dim("batch", min=1, max=4096)

        def export(target: str) -> None:
            with torch.no_grad():
                torch.onnx.export(decoder, (example,), target, input_names=list(DECODER_INPUTS),
                                  output_names=list(DECODER_OUTPUTS), opset_version=opset_version, dynamo=True,
                                  external_data=False, dynamic_shapes=({0: batch},), verbose=False)

        save_onnx(export, path, {k: json.dumps(v) for k, v in facts.items()})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {DECODER_INPUTS[0]: check.numpy()})[0]
        result["model_decoder.onnx"] = str(path)
        result["model_decoder.onnx max_abs_diff"] = float(np.abs(out - reference.numpy()).max())
    return result
