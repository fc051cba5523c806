"""Training objectives beyond MONAI's uniform-timestep MSE: loss weighting, noise-level sampling, preconditioning.

MONAI's ``DiffusionPrepareBatch`` draws timesteps uniformly and returns an unweighted target; these are the pieces the
training recipe can switch on (bundle keys ``loss_weighting``, ``timestep_sampling``, ``preconditioning``), written
here because MONAI has none of them:

- **Min-SNR-gamma** loss weighting (Hang et al. 2023): each sample's loss is weighted by ``min(SNR, gamma) / SNR``
  (epsilon), ``min(SNR, gamma) / (SNR + 1)`` (v) or ``min(SNR, gamma)`` (x0), so the easy low-noise steps stop
  dominating the gradient.
- **Log-normal noise levels** (Karras et al. 2022, EDM): ``ln sigma ~ N(mean, std)`` mapped to the nearest timestep
  of the discrete schedule (``sigma_t = sqrt((1 - abar_t) / abar_t)``), concentrating training on mid-range noise.
- **EDM preconditioning** on the VP schedule: with ``x_hat = x_t / sqrt(abar_t) = x0 + sigma eps`` the network sees
  ``c_in x_hat`` and predicts ``F`` with ``x0 = c_skip x_hat + c_out F`` (``c_skip = sd^2 / (sigma^2 + sd^2)``,
  ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``sd = sigma_data``); EDM's loss
  weight makes the loss plain MSE on ``F``. :class:`PreconditionedNetwork` turns ``F`` back into the epsilon every
  sampler expects, so DDIM, DPM-Solver++ and guidance work unchanged.
"""

from __future__ import annotations

import math

import torch

LOSS_WEIGHTINGS = ("none", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "lognormal")
PRECONDITIONINGS = ("none", "edm")


def alphas_cumprod(scheduler, device: torch.device | str = "cpu") -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` of each timestep."""
    abar = alphas_cumprod(scheduler, timesteps.device)[timesteps]
    return abar / (1.0 - abar)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weight of each sample for a loss on the given prediction type."""
    clipped = snr_t.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1.0)
    if prediction_type == "sample":
        return clipped
    return clipped / snr_t


def lognormal_timesteps(scheduler, n: int, mean: float = -1.2, std: float = 1.2,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` timesteps whose noise level sigma is log-normal (EDM's training distribution), nearest on the schedule."""
    abar = alphas_cumprod(scheduler, device)
    log_sigmas = 0.5 * torch.log((1.0 - abar) / abar)  # increasing with t
    drawn = torch.randn(n, device=device) * std + mean
    index = torch.searchsorted(log_sigmas.contiguous(), drawn.clamp(log_sigmas[0], log_sigmas[-1]))
    index = index.clamp(1, len(log_sigmas) - 1)
    lower_closer = (drawn - log_sigmas[index - 1]).abs() < (log_sigmas[index] - drawn).abs()
    return torch.where(lower_closer, index - 1, index).long()


class EDMPreconditioning:
    """EDM's c_skip / c_out / c_in on a discrete VP schedule (see the module docstring)."""

    def __init__(self, scheduler, sigma_data: float = 0.5) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.scheduler = scheduler
        self.sigma_data = float(sigma_data)

    def _per_sample(self, timesteps: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        abar = alphas_cumprod(self.scheduler, timesteps.device)[timesteps.long()]
        shape = (-1,) + (1,) * (ndim - 1)
        scale = abar.sqrt().view(shape)  # x_t = scale * x_hat
        sigma = ((1.0 - abar) / abar).sqrt().view(shape)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sigma**2 + sd2).sqrt()
        return scale, sigma, c_skip, c_out, c_in

    def input_scale(self, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
        """Factor that turns the scheduler's ``x_t`` into the network input ``c_in x_hat``."""
        scale, _, _, _, c_in = self._per_sample(timesteps, ndim)
        return c_in / scale

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The network's regression target ``F* = (x0 - c_skip x_hat) / c_out``."""
        _, sigma, c_skip, c_out, _ = self._per_sample(timesteps, x0.ndim)
        x_hat = x0 + sigma * noise
        return (x0 - c_skip * x_hat) / c_out

    def to_epsilon(self, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Epsilon implied by the network output ``F`` at ``x_t`` (what the schedulers step with)."""
        scale, sigma, c_skip, c_out, _ = self._per_sample(timesteps, x_t.ndim)
        x_hat = x_t / scale
        x0 = c_skip * x_hat + c_out * output
        return (x_hat - x0) / sigma


class PreconditionedNetwork(torch.nn.Module):
    """A network trained with EDM preconditioning, seen from outside as an epsilon-prediction network."""

    def __init__(self, network: torch.nn.Module, preconditioning: EDMPreconditioning) -> None:
        super().__init__()
        self.network = network
        self.preconditioning = preconditioning

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        p = self.preconditioning
        model_in = x * p.input_scale(timesteps, x.ndim).to(x.dtype)
        out = self.network(model_in, timesteps, context=context, class_labels=class_labels)
        return p.to_epsilon(out.float(), x.float(), timesteps).to(out.dtype)


def for_sampling(network: torch.nn.Module, scheduler, preconditioning: str | None = "none",
                 sigma_data: float = 0.5) -> torch.nn.Module:
    """The network as samplers call it: wrapped when it was trained with a preconditioning, else itself."""
    if (preconditioning or "none") == "none":
        return network
    if preconditioning != "edm":
        raise ValueError(f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}")
    return PreconditionedNetwork(network, EDMPreconditioning(scheduler, sigma_data))


def check_objective(loss_weighting: str, timestep_sampling: str, preconditioning: str, prediction_type: str) -> None:
    """One-line errors for combinations that cannot work."""
    for key, value, allowed in (("loss_weighting", loss_weighting, LOSS_WEIGHTINGS),
                                ("timestep_sampling", timestep_sampling, TIMESTEP_SAMPLINGS),
                                ("preconditioning", preconditioning, PRECONDITIONINGS)):
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    if preconditioning == "edm" and prediction_type != "epsilon":
        raise ValueError(f"preconditioning 'edm' defines its own output (F); set prediction_type epsilon (the "
                         f"samplers see epsilon), got {prediction_type!r}")
    if preconditioning == "edm" and loss_weighting != "none":
        raise ValueError("preconditioning 'edm' has its own loss weighting: set loss_weighting none")


def warmup_cosine_factor(step: int, warmup: int, total: int, final_factor: float = 0.1,
                         schedule: str = "cosine") -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then constant or cosine down to ``final_factor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
