"""The training-time inferer: noise the images, run the network with class labels, under autocast."""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler

from medgen.diffusion.precision import autocast, resolve_dtype


class ConditionalDiffusionInferer(DiffusionInferer):
    """``DiffusionInferer`` that passes ``class_labels`` to the network (MONAI's does not) and runs the forward
    pass under bf16/fp16 autocast when ``precision`` asks for it (``auto``: where the hardware supports bf16).

    The prediction is returned in fp32 so the loss is computed at full precision.
    """

    def __init__(self, scheduler: Scheduler, precision: str = "auto") -> None:
        super().__init__(scheduler)
        self.precision = precision

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        seg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        dtype = resolve_dtype(inputs.device, self.precision)
        with autocast(inputs.device, dtype):
            prediction = diffusion_model(x=noisy, timesteps=timesteps, context=condition, class_labels=class_labels)
        return prediction.float()
