"""The training-time inferer: noise the images, run the network with class labels, under autocast."""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler

from medgen.diffusion.precision import autocast, resolve_dtype


class ConditionalDiffusionInferer(DiffusionInferer):
    """``DiffusionInferer`` that passes ``class_labels`` to the network (MONAI's does not) and runs the forward
    pass under bf16/fp16 autocast when ``precision`` asks for it (``auto``: where the hardware supports bf16).

    The prediction is returned in fp32 so the loss is computed at full precision. ``input_scale`` and ``loss_scale``
    come from :class:`~medgen.diffusion.ConditionalDiffusionPrepareBatch` when the training objective has them.
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
        input_scale: torch.Tensor | None = None,
        loss_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        if input_scale is not None:  # preconditioning: the network sees c_in * x_hat
            noisy = noisy * input_scale
        dtype = resolve_dtype(inputs.device, self.precision)
        with autocast(inputs.device, dtype):
            prediction = diffusion_model(x=noisy, timesteps=timesteps, context=condition, class_labels=class_labels)
        prediction = prediction.float()
        return prediction if loss_scale is None else prediction * loss_scale  # the target is scaled alike
