"""Denoising score matching (NCSN) for MONAI's ``SupervisedTrainer``: prepare-batch, inferer and loss.

The objective of Song & Ermon 2019 (eq. 6), with σ_i drawn uniformly per sample:

    L(θ) = (1/L) Σ_i σ_i² E ‖s_θ(x + σ_i ε, σ_i) + ε / σ_i‖²,  ε ~ N(0, I).

With s_θ = F_θ / σ (:class:`medgen.networks.score.ScoreNetwork`) each term is ‖F_θ + ε‖², so the inferer returns
F_θ = σ s_θ, the prepare-batch returns the target -ε and the loss is a squared error between them. The pieces slot
into the trainer where MONAI's ``DiffusionPrepareBatch`` / ``DiffusionInferer`` go; MONAI has no VE / score
matching inferer, hence this module.
"""

from __future__ import annotations

import torch
from torch import nn

from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.precision import autocast, resolve_dtype
from medgen.diffusion.prepare_batch import ConditionalDiffusionPrepareBatch


class DSMPrepareBatch(ConditionalDiffusionPrepareBatch):
    """Images, target -ε, and the inferer's ``noise``, ``timesteps`` (level indices, per sample) and
    ``class_labels`` (with dropout to the null class, for classifier-free guidance).

    Args:
        scheduler: the :class:`NCSNScheduler` (its L is the number of levels drawn from).
        label_key: batch key of the integer class labels; None trains unconditionally.
        null_class: index of the null class (= number of real classes).
        label_dropout: probability of replacing a label with the null class.
        timestep_sampling: ``uniform`` (i ~ U{0..L-1}, NCSN: log σ uniform over [σ_min, σ_max]) or ``lognormal``
            (the level nearest to log σ ~ N(``lognormal_mean``, ``lognormal_std``²), EDM's noise distribution,
            which spends the training on the levels where the images take shape instead of σ far above the data).
    """

    def __init__(self, scheduler: NCSNScheduler, label_key: str | None = "label", null_class: int | None = None,
                 label_dropout: float = 0.1, timestep_sampling: str = "uniform", lognormal_mean: float = -1.2,
                 lognormal_std: float = 1.2) -> None:
        if timestep_sampling not in ("uniform", "lognormal"):
            raise ValueError(f"timestep_sampling must be 'uniform' or 'lognormal', got {timestep_sampling!r}")
        super().__init__(num_train_timesteps=scheduler.num_train_timesteps, scheduler=None, label_key=label_key,
                         null_class=null_class, label_dropout=label_dropout, prediction_type="score")
        self.scheduler = scheduler
        self.timestep_sampling, self.lognormal = timestep_sampling, (float(lognormal_mean), float(lognormal_std))

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        if self.timestep_sampling == "uniform":
            return super().get_timesteps(images)
        mean, std = self.lognormal
        log_sigma = torch.randn(images.shape[0], device=images.device) * std + mean
        return self.scheduler.nearest_level(log_sigma)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return -noise


class ScoreMatchingInferer:
    """Noise the images at their levels (x + σ_i ε) and return σ_i s_θ(x̃, σ_i), under autocast where asked.

    Args:
        scheduler: the :class:`NCSNScheduler` mapping level indices to σ.
        precision: ``auto`` (bf16 where supported), ``bf16``, ``fp16`` or ``fp32``.
    """

    def __init__(self, scheduler: NCSNScheduler, precision: str = "auto") -> None:
        self.scheduler = scheduler
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: nn.Module, noise: torch.Tensor, timesteps: torch.Tensor,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        noisy = self.scheduler.add_noise(inputs, noise, timesteps)
        sigma = self.scheduler.sigma(timesteps).to(inputs.device)
        with autocast(inputs.device, resolve_dtype(inputs.device, self.precision)):
            if hasattr(network, "scaled_score"):
                out = network.scaled_score(noisy, sigma, class_labels)
            else:  # a wrapper (DistributedDataParallel): the forward pass must go through it; s_θ times σ
                out = network(noisy, sigma, class_labels=class_labels) * sigma.reshape(-1, *([1] * (noisy.ndim - 1)))
        return out.float()


class DenoisingScoreMatchingLoss(nn.Module):
    """‖σ s_θ + ε‖² per sample, averaged over the batch: the NCSN loss with λ(σ) = σ².

    Args:
        reduction: ``mean`` divides each sample's squared norm by the number of pixels D (the scale of
            ``torch.nn.MSELoss``, comparable across image sizes); ``sum`` is the paper's ‖·‖² exactly.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def per_sample(self, scaled_score: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """σ² ‖s_θ + ε/σ‖² for each sample (divided by D with ``reduction='mean'``); ``target`` is -ε."""
        sq = (scaled_score.float() - target.float()).pow(2).flatten(1)
        return sq.mean(dim=1) if self.reduction == "mean" else sq.sum(dim=1)

    def forward(self, scaled_score: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(scaled_score, target).mean()
