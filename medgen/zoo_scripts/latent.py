"""Latent diffusion training batches for an exported latent bundle: images encoded by the frozen autoencoder.

medgen itself encodes the training split once and caches the latents (``medgen.latent.cache``); the exported bundle
runs with MONAI alone, so it encodes every batch on the fly as MONAI's ``LatentDiffusionInferer`` does (a posterior
sample times the scale factor), then makes noise, timesteps, target and class labels as the pixel route does.
"""

from __future__ import annotations

from typing import Any

import torch

from medgen.diffusion.prepare_batch import ConditionalDiffusionPrepareBatch


class LatentPrepareBatch(ConditionalDiffusionPrepareBatch):
    """:class:`ConditionalDiffusionPrepareBatch` on ``autoencoder.encode_stage_2_inputs(image) * scale_factor``.

    Args:
        autoencoder: the frozen MONAI ``AutoencoderKL`` (eval mode and no gradients are set here).
        scale_factor: the latents' scale factor the bundle's diffusion network was trained with.
        image_key: the batch key of the pixel images.
        kwargs: :class:`ConditionalDiffusionPrepareBatch`'s arguments.
    """

    def __init__(self, autoencoder: torch.nn.Module, scale_factor: float, image_key: str = "image",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.image_key = image_key

    def __call__(self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        with torch.no_grad():
            images = batchdata[self.image_key].to(device=device, non_blocking=non_blocking)
            latents = self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor
        return super().__call__({**batchdata, self.image_key: latents}, device, non_blocking, **kwargs)
