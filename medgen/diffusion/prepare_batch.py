"""Batch preparation for class-conditional diffusion training (the MONAI ``PrepareBatch`` pattern)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler

from medgen.diffusion import objectives


class ConditionalDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Noise, timesteps, target and class labels for one training batch.

    Extends MONAI's ``DiffusionPrepareBatch`` with class labels (passed to the inferer as ``class_labels``),
    label dropout to the null class (for classifier-free guidance) and the v-prediction target.

    Args:
        num_train_timesteps: T of the noise schedule.
        scheduler: the training scheduler; needed for ``v_prediction`` targets.
        label_key: batch key holding integer class labels; None trains unconditionally.
        null_class: index of the null class (= number of real classes).
        label_dropout: probability of replacing a label with the null class.
        prediction_type: ``epsilon`` or ``v_prediction`` (``sample`` predicts x0).
        loss_weighting: ``none`` or ``min_snr`` (Min-SNR-gamma, with ``min_snr_gamma``).
        timestep_sampling: ``uniform`` or ``lognormal`` (EDM's noise levels, ``lognormal_mean`` / ``lognormal_std``).
        preconditioning: ``none`` or ``edm`` (EDM's c_skip / c_out / c_in, with ``sigma_data``).

    The objective's extras reach the inferer as keyword arguments: ``input_scale`` (preconditioning) multiplies the
    noisy input, ``loss_scale`` (sqrt of the loss weight) multiplies the prediction, and the target is scaled alike, so
    the trainer's plain ``MSELoss`` computes the weighted loss (see :mod:`medgen.diffusion.objectives`).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        scheduler: Scheduler | None = None,
        label_key: str | None = "label",
        null_class: int | None = None,
        label_dropout: float = 0.1,
        prediction_type: str | None = None,
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        timestep_sampling: str = "uniform",
        lognormal_mean: float = -1.2,
        lognormal_std: float = 1.2,
        preconditioning: str = "none",
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        self.scheduler = scheduler
        self.label_key = label_key
        self.null_class = null_class
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.label_dropout = label_dropout
        self.prediction_type = prediction_type or getattr(scheduler, "prediction_type", "epsilon")
        if self.prediction_type == "v_prediction" and scheduler is None:
            raise ValueError("v_prediction targets need the scheduler (get_velocity)")
        objectives.check_objective(loss_weighting, timestep_sampling, preconditioning, self.prediction_type)
        if scheduler is None and (loss_weighting, timestep_sampling, preconditioning) != ("none", "uniform", "none"):
            raise ValueError("loss weighting, log-normal timesteps and preconditioning need the scheduler")
        self.loss_weighting, self.min_snr_gamma = loss_weighting, float(min_snr_gamma)
        self.timestep_sampling, self.lognormal = timestep_sampling, (float(lognormal_mean), float(lognormal_std))
        self.preconditioning = (objectives.EDMPreconditioning(scheduler, sigma_data)
                                if preconditioning == "edm" else None)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        if self.timestep_sampling == "lognormal":
            return objectives.lognormal_timesteps(self.scheduler, images.shape[0], *self.lognormal, images.device)
        return super().get_timesteps(images)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.preconditioning is not None:
            return self.preconditioning.target(images, noise, timesteps)
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)  # type: ignore[union-attr]
        if self.prediction_type == "sample":
            return images
        return noise

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.null_class is None or self.label_dropout == 0.0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        timesteps = infer_kwargs["timesteps"]
        shape = (-1,) + (1,) * (images.ndim - 1)
        if self.preconditioning is not None:
            infer_kwargs["input_scale"] = self.preconditioning.input_scale(timesteps, images.ndim)
        if self.loss_weighting == "min_snr":
            weight = objectives.min_snr_weight(objectives.snr(self.scheduler, timesteps), self.min_snr_gamma,
                                               self.prediction_type)
            infer_kwargs["loss_scale"] = weight.sqrt().view(shape)
            target = target * infer_kwargs["loss_scale"]
        if self.label_key is not None and isinstance(batchdata, Mapping):
            labels = torch.as_tensor(batchdata[self.label_key]).long().reshape(-1).to(device)
            infer_kwargs["class_labels"] = self.drop_labels(labels)
        return images, target, args, infer_kwargs
