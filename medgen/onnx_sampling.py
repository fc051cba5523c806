"""Deterministic DDIM sampling from an exported ONNX diffusion network alone: numpy and onnxruntime, no torch.

Implements DDIM (Song, Meng, Ermon, ICLR 2021, eq. 12 with eta = 0) for epsilon, v and sample prediction, with
classifier-free guidance (Ho and Salimans 2022): ``u + w (c - u)``. It mirrors MONAI's ``DDIMScheduler`` as
:class:`medgen.diffusion.DiffusionPipeline` configures it: timesteps ``round(linspace(T - 1, 0, n))``, previous
timestep ``t - T // n``, predicted x0 clipped to [-1, 1], final alpha 1, result clamped to [-1, 1].

The noise schedule, prediction type, classes and image shape are read from the ONNX file's ``metadata_props``,
written by :func:`medgen.networks.export.export_bundle`. Starting noise comes from
``numpy.random.default_rng(seed)``, which is not torch's generator: to reproduce a torch run exactly, pass its
starting noise as ``noise``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the ``medgen.*`` metadata keys :class:`OnnxDDIMSampler` reads (written by ``networks.export.sampling_metadata``)
SAMPLING_METADATA = ("betas", "num_train_timesteps", "prediction_type", "classes", "null_class", "image_shape")


class OnnxDDIMSampler:
    """Class-conditional DDIM sampling with an ONNX network ``(image, timesteps, class_labels) -> pred``.

    Args:
        onnx_path: the exported network (``models/model.onnx``).
        providers: onnxruntime execution providers (default: CPU).
        clip_sample: clip the predicted x0 to [-1, 1] at every step, as the torch pipeline does.
        **overrides: replace a value read from the file's metadata: ``betas``, ``prediction_type``,
            ``classes``, ``null_class``, ``image_shape`` (needed when the file has no medgen metadata).
    """

    def __init__(self, onnx_path: str | Path, providers: Sequence[str] | None = None, clip_sample: bool = True,
                 **overrides: Any) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=list(providers or ["CPUExecutionProvider"]))
        stored = self.session.get_modelmeta().custom_metadata_map
        # only what sampling reads: the file also names its bundle, version and weights (plain strings)
        meta = {key: v if key == "prediction_type" else json.loads(v)
                for key, v in ((k.removeprefix("medgen."), v) for k, v in stored.items() if k.startswith("medgen."))
                if key in SAMPLING_METADATA}
        meta.update(overrides)
        missing = [k for k in ("betas", "prediction_type", "image_shape") if k not in meta]
        if missing:
            raise ValueError(f"{onnx_path} has no {missing} in its metadata: export it with medgen export-model "
                             "or pass them as keyword arguments")
        self.betas = np.asarray(meta["betas"], dtype=np.float32)
        self.alphas_cumprod = np.cumprod(np.float32(1.0) - self.betas, dtype=np.float32)
        self.num_train_timesteps = len(self.betas)
        self.prediction_type = str(meta["prediction_type"])
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}")
        self.classes = list(meta.get("classes", []))
        self.null_class = int(meta.get("null_class", len(self.classes)))
        self.image_shape = tuple(int(s) for s in meta["image_shape"])
        self.clip_sample = clip_sample
        self.input_names = [i.name for i in self.session.get_inputs()]

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], "
                             f"got {num_inference_steps}")
        return np.linspace(self.num_train_timesteps - 1, 0, num_inference_steps).round().astype(np.int64)

    def initial_noise(self, seeds: Sequence[int]) -> np.ndarray:
        """One standard normal image per seed, each from its own ``default_rng(seed)``."""
        return np.stack([np.random.default_rng(int(s)).standard_normal(self.image_shape) for s in seeds]).astype(
            np.float32)

    def network(self, x: np.ndarray, timesteps: np.ndarray, labels: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, (x.astype(np.float32), timesteps.astype(np.int64),
                                            labels.astype(np.int64))))
        return self.session.run(None, feeds)[0].astype(np.float32)

    def predict(self, x: np.ndarray, t: int, labels: np.ndarray, guidance_scale: float = 1.0) -> np.ndarray:
        """Network output at timestep ``t``, guided: ``u + w (c - u)``; w = 1 is plain conditional."""
        steps = np.full((x.shape[0],), t, dtype=np.int64)
        if guidance_scale == 1.0:
            return self.network(x, steps, labels)
        null = np.full_like(labels, self.null_class)
        out = self.network(np.concatenate([x, x]), np.concatenate([steps, steps]), np.concatenate([labels, null]))
        cond, uncond = np.split(out, 2)
        return uncond + np.float32(guidance_scale) * (cond - uncond)

    def predict_start_and_noise(self, model_output: np.ndarray, t: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x0, epsilon)`` from the network output at timestep ``t``."""
        alpha = self.alphas_cumprod[t]
        sqrt_alpha, sqrt_beta = alpha ** np.float32(0.5), (np.float32(1.0) - alpha) ** np.float32(0.5)
        if self.prediction_type == "epsilon":
            return (x - sqrt_beta * model_output) / sqrt_alpha, model_output
        if self.prediction_type == "v_prediction":
            return sqrt_alpha * x - sqrt_beta * model_output, sqrt_alpha * model_output + sqrt_beta * x
        return model_output, (x - sqrt_alpha * model_output) / sqrt_beta

    def step(self, model_output: np.ndarray, t: int, x: np.ndarray, num_inference_steps: int) -> np.ndarray:
        """One DDIM step (eta = 0): ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``."""
        prev_t = t - self.num_train_timesteps // num_inference_steps
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        x0, eps = self.predict_start_and_noise(model_output, t, x)
        if self.clip_sample:
            x0 = np.clip(x0, -1.0, 1.0)
        return (alpha_prev ** np.float32(0.5) * x0 + (np.float32(1.0) - alpha_prev) ** np.float32(0.5) * eps).astype(
            np.float32)

    def sample(self, labels: Sequence[int], seeds: Sequence[int] | None = None, num_inference_steps: int = 50,
               guidance_scale: float = 1.0, noise: np.ndarray | None = None) -> np.ndarray:
        """Images in [-1, 1], shape ``(N, C, H, W)``, one per label; starting noise from ``seeds`` or ``noise``."""
        labels_arr = np.asarray([int(v) for v in labels], dtype=np.int64)
        if noise is None:
            if seeds is None or len(seeds) != len(labels_arr):
                raise ValueError("give one seed per label, or the starting noise")
            noise = self.initial_noise(seeds)
        x = np.asarray(noise, dtype=np.float32)
        if x.shape[0] != len(labels_arr):
            raise ValueError(f"{len(labels_arr)} labels but noise for {x.shape[0]} images")
        for t in self.timesteps(num_inference_steps):
            x = self.step(self.predict(x, int(t), labels_arr, guidance_scale), int(t), x, num_inference_steps)
        return np.clip(x, -1.0, 1.0)
