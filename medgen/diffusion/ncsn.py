"""Noise-conditional score networks: the geometric σ-level scheduler of NCSN / NCSNv2 (variance-exploding noise).

Implements the noise levels and update rules of
  - Song Y, Ermon S. Generative Modeling by Estimating Gradients of the Data Distribution. NeurIPS 2019 (NCSN:
    geometric σ_1 > ... > σ_L, annealed Langevin dynamics, step size α_i = ε σ_i² / σ_L²);
  - Song Y, Ermon S. Improved Techniques for Training Score-Based Generative Models. NeurIPS 2020 (NCSNv2:
    σ_1 ≈ the largest pairwise distance of the training data, L from the γ rule, s_θ(x, σ) = F_θ(x, σ) / σ);
  - Song Y et al. Score-Based Generative Modeling through Stochastic Differential Equations. ICLR 2021 (the
    reverse-diffusion predictor and signal-to-noise-ratio step size of predictor–corrector sampling for the VE SDE).

Supported model output: the score ∇_x log p_σ(x) (what :class:`medgen.networks.score.ScoreNetwork` returns). Its
x0 estimate is Tweedie's formula x + σ² s. Timesteps are level indices: 0 is σ_max, L - 1 is σ_min, so the
timesteps of :meth:`set_timesteps` run from the noisiest level to the cleanest, like MONAI's DDIM scheduler.

MONAI's schedulers (DDPM, DDIM, PNDM, RFlow) are all variance-preserving with integer timesteps; none has VE σ
levels or Langevin updates, hence this module. It keeps their interface (``set_timesteps``, ``step``,
``add_noise``) so a pipeline can hold either.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class NCSNScheduler:
    """L noise levels σ_i = σ_max (σ_min / σ_max)^(i / (L - 1)), i = 0 .. L - 1.

    Args:
        num_train_timesteps: L, the number of noise levels seen in training.
        sigma_max: the largest σ (NCSNv2 technique 1: about the largest distance between two training images).
        sigma_min: the smallest σ (below the data's quantisation noise: 0.01 on [-1, 1] is ~1.3 grey levels).
    """

    def __init__(self, num_train_timesteps: int = 232, sigma_max: float = 50.0, sigma_min: float = 0.01) -> None:
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps (L, the number of noise levels) must be at least 2, "
                             f"got {num_train_timesteps}")
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.sigma_max = float(sigma_max)
        self.sigma_min = float(sigma_min)
        self.prediction_type = "score"
        self.sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), self.num_train_timesteps,
                                               dtype=torch.float64)).float()
        self.num_inference_steps = self.num_train_timesteps
        self.timesteps = torch.arange(self.num_train_timesteps)

    # ---- the noise levels -------------------------------------------------------------------------------------
    def sigma(self, timesteps: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """σ of level index(es) ``timesteps``; with ``like``, shaped ``(N, 1, ..., 1)`` to broadcast over images."""
        index = torch.as_tensor(timesteps, device=self.sigmas.device).long()
        sigma = self.sigmas[index]
        if like is None:
            return sigma
        sigma = sigma.to(device=like.device, dtype=like.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(like.shape[0])
        return sigma.reshape(-1, *([1] * (like.ndim - 1)))

    def nearest_level(self, log_sigma: torch.Tensor) -> torch.Tensor:
        """The level index whose σ is nearest to exp(``log_sigma``) in log scale (clamped to [σ_min, σ_max])."""
        span = math.log(self.sigma_max) - math.log(self.sigma_min)
        index = (math.log(self.sigma_max) - log_sigma.float()) / span * (self.num_train_timesteps - 1)
        return index.round().clamp(0, self.num_train_timesteps - 1).long()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Visit ``num_inference_steps`` of the L levels when sampling, evenly spaced in index (so geometric in σ),
        always including σ_max and σ_min."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be between 1 and the number of noise levels "
                             f"{self.num_train_timesteps}, got {num_inference_steps}")
        self.num_inference_steps = int(num_inference_steps)
        steps = np.round(np.linspace(0, self.num_train_timesteps - 1, self.num_inference_steps)).astype(np.int64)
        self.timesteps = torch.from_numpy(steps).to(device)

    def next_timestep(self, timestep: int) -> int | None:
        """The level after ``timestep`` in the inference schedule, or None at the last one."""
        later = self.timesteps[self.timesteps > int(timestep)]
        return int(later[0]) if len(later) else None

    # ---- training ---------------------------------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x̃ = x + σ_t ε (variance exploding: the signal is not scaled)."""
        return original_samples + self.sigma(timesteps, like=original_samples) * noise

    # ---- sampling ---------------------------------------------------------------------------------------------
    def denoise(self, score: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """Tweedie's formula: E[x | x̃] = x̃ + σ² ∇ log p_σ(x̃)."""
        return sample + self.sigma(timestep) ** 2 * score

    def langevin_step_size(self, timestep: int, step_lr: float) -> float:
        """NCSN's α_i = ε σ_i² / σ_L² (σ_L = σ_min of training), so the signal-to-noise ratio of a step is the same
        at every level."""
        return float(step_lr * (self.sigma(timestep) / self.sigma_min) ** 2)

    def langevin_step(self, score: torch.Tensor, sample: torch.Tensor, step_size: float | torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """One Langevin update x ← x + α s + √(2α) z (the corrector; ``step_size`` α may be per image)."""
        if isinstance(step_size, torch.Tensor):
            step_size = step_size.reshape(-1, *([1] * (sample.ndim - 1)))
        return sample + step_size * score + (2.0 * step_size) ** 0.5 * noise

    @staticmethod
    def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> torch.Tensor:
        """Song et al. 2021, Algorithm 4: α = 2 (r ‖z‖ / ‖s‖)² per image, r the target signal-to-noise ratio."""
        score_norm = score.flatten(1).norm(dim=1).clamp_min(1e-12)
        noise_norm = noise.flatten(1).norm(dim=1)
        return 2.0 * (snr * noise_norm / score_norm) ** 2

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-diffusion predictor from level ``timestep`` to the next level of the inference schedule:
        x ← x + (σ_t² - σ_next²) s + √(σ_t² - σ_next²) z. At the last level (no next) the step is Tweedie's
        denoising, without noise.

        Returns:
            the sample at the next level and the x0 estimate (Tweedie), as MONAI's schedulers do.
        """
        x0 = self.denoise(model_output, timestep, sample)
        nxt = self.next_timestep(timestep)
        if nxt is None:
            return x0, x0
        var = float(self.sigma(timestep) ** 2 - self.sigma(nxt) ** 2)
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return sample + var * model_output + var**0.5 * noise, x0

    def ode_step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
                 previous: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPM-Solver++ (2M) step of the probability-flow ODE dx/dσ = -σ s(x, σ) = (x - D(x, σ)) / σ, from level
        ``timestep`` to the next level of the inference schedule (deterministic; no noise is drawn).

        The VE form of Lu et al. 2022 (α = 1, λ = -log σ), i.e. Karras et al. 2022's ODE with the data-prediction
        multistep solver: ``x_next = (σ_next / σ) x + (1 - σ_next / σ) D̃``, ``D̃ = D + (D - D_prev) / (2 r)`` with
        ``r = h_prev / h`` when ``previous = (D_prev, level_prev)`` is given, else ``D̃ = D`` (first order, the
        VE analogue of DDIM). At the last level the step is Tweedie's denoising.

        Returns:
            the sample at the next level and the x0 estimate D = x + σ² s (pass both on as ``previous``).
        """
        x0 = self.denoise(model_output, timestep, sample)
        nxt = self.next_timestep(timestep)
        if nxt is None:
            return x0, x0
        sigma, sigma_next = float(self.sigma(timestep)), float(self.sigma(nxt))
        denoised = x0
        if previous is not None:
            previous_x0, previous_level = previous
            r = math.log(float(self.sigma(previous_level)) / sigma) / math.log(sigma / sigma_next)
            denoised = x0 + (x0 - previous_x0) / (2.0 * r)
        ratio = sigma_next / sigma
        return ratio * sample + (1.0 - ratio) * denoised, x0


def ncsnv2_num_levels(dim: int, sigma_max: float, sigma_min: float, target: float = 0.5) -> int:
    """L from NCSNv2 technique 2: the ratio γ = σ_{i-1} / σ_i with
    Φ(√(2D)(γ - 1) + 3γ) - Φ(√(2D)(γ - 1) - 3γ) ≈ ``target``, so neighbouring noise shells overlap.

    Solved by bisection on γ (the left side falls as γ grows). ``dim`` is D = channels x height x width.
    """
    def phi(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    def overlap(gamma: float) -> float:
        c = math.sqrt(2.0 * dim) * (gamma - 1.0)
        return phi(c + 3.0 * gamma) - phi(c - 3.0 * gamma)

    lo, hi = 1.0 + 1e-9, 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if overlap(mid) > target else (lo, mid)
    return int(math.ceil(math.log(sigma_max / sigma_min) / math.log(lo))) + 1


def max_pairwise_distance(images: torch.Tensor) -> float:
    """The largest Euclidean distance between two images of ``images`` (N, ...): NCSNv2's σ_max."""
    flat = images.flatten(1).double()
    return float(torch.cdist(flat, flat).max())
