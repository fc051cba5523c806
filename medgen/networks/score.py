"""A noise-conditional score network s_θ(x, σ) = F_θ(c_in(σ) x, log σ) / σ around the class-conditional UNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medgen.networks.unet import ConditionalDiffusionUNet


class ScoreNetwork(nn.Module):
    """Score of the σ-smoothed data density, class-conditional, for NCSN / denoising score matching.

    The noise level enters once, as ``log σ`` through the UNet's sinusoidal timestep embedding (it accepts real
    values), and the output is divided by σ (NCSNv2, technique 3), so the UNet predicts a unit-scale quantity
    (-ε at the optimum) at every level. ``sigma_data`` > 0 also scales the input by 1 / √(σ² + σ_data²) (the
    input preconditioning of Karras et al. 2022), keeping the UNet's input near unit variance when σ is 150;
    0 feeds x as is, as the NCSN papers do.

    ``skip=True`` (with ``sigma_data`` > 0) adds Karras et al.'s skip connection, written for the score:
    σ s_θ = -σ x / (σ² + σ_data²) + σ_data / √(σ² + σ_data²) F_θ, i.e. the score of N(0, σ_data² + σ²) plus a learnt
    correction. At large σ the first term is already -ε, so even a briefly trained model contracts the noise in
    sampling; at small σ it is F_θ / σ as in NCSNv2. The loss is unchanged (it is on s_θ).

    Args:
        unet: a :class:`ConditionalDiffusionUNet` (or any module taking ``(x, timesteps, class_labels=...)``);
            when None one is built from the remaining arguments.
        sigma_data: the data's standard deviation for input scaling (0 turns it off).
        noise_embedding_scale: the timestep embedding receives ``noise_embedding_scale * log σ``.
        skip: add the Gaussian skip connection above.
    """

    def __init__(
        self,
        unet: nn.Module | None = None,
        sigma_data: float = 0.5,
        noise_embedding_scale: float = 1.0,
        skip: bool = True,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int | Sequence[int] = 2,
        num_head_channels: int | Sequence[int] = 32,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if unet is None:
            unet = ConditionalDiffusionUNet(
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
                num_classes=num_classes, channels=channels, attention_levels=attention_levels,
                num_res_blocks=num_res_blocks, num_head_channels=num_head_channels, norm_num_groups=norm_num_groups,
            )
        if sigma_data < 0:
            raise ValueError(f"sigma_data must be >= 0 (0 turns input scaling off), got {sigma_data}")
        # the constructor's arguments, recorded with the weights (medgen.networks.weights_meta)
        self.init_args = {"sigma_data": sigma_data, "noise_embedding_scale": noise_embedding_scale, "skip": skip,
                          **{k: v for k, v in getattr(unet, "init_args", {}).items()
                             if k not in ("out_channels", "resblock_updown")}}
        self.unet = unet
        self.sigma_data = float(sigma_data)
        self.noise_embedding_scale = float(noise_embedding_scale)
        self.skip = bool(skip) and self.sigma_data > 0

    @property
    def num_classes(self) -> int | None:
        return getattr(self.unet, "num_classes", None)

    def scaled_score(self, x: torch.Tensor, sigma: torch.Tensor,
                     class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F_θ = σ s_θ: the network's raw output (the DSM regression target is -ε)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if torch.any(sigma <= 0):
            raise ValueError("noise levels sigma must be positive")
        c_noise = self.noise_embedding_scale * torch.log(sigma)
        if self.sigma_data == 0:
            return self.unet(x, c_noise, class_labels=class_labels)
        shape = (-1, *([1] * (x.ndim - 1)))
        c_in = (sigma**2 + self.sigma_data**2).rsqrt().reshape(shape)
        out = self.unet(x * c_in.to(x.dtype), c_noise, class_labels=class_labels)
        if not self.skip:
            return out
        sig = sigma.reshape(shape)
        return -sig * c_in**2 * x.float() + self.sigma_data * c_in * out.float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """s_θ(x, σ) ≈ ∇_x log p_σ(x); ``sigma`` is a scalar or one value per image."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        out = self.scaled_score(x, sigma, class_labels)
        return out / sigma.reshape(-1, *([1] * (x.ndim - 1))).to(out.dtype)
