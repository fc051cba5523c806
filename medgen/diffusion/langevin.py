"""Annealed Langevin sampling of a noise-conditional score network, batched, seeded and class-conditional.

Four samplers over the levels of an :class:`~medgen.diffusion.ncsn.NCSNScheduler`, all from x ~ N(0, σ_max² I):
  - ``als``: annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): K Langevin steps at each level;
  - ``pc``: predictor–corrector (Song et al. 2021, Algorithm 2 for the VE SDE): K Langevin corrector steps, then a
    reverse-diffusion predictor step to the next level;
  - ``reverse``: the reverse-diffusion predictor alone (an ancestral sampler);
  - ``dpmpp2m``: the probability-flow ODE of the VE SDE by DPM-Solver++ 2M (deterministic, one network evaluation
    per level, so 20-50 levels instead of the stochastic samplers' 200 x 2).
Each ends with Tweedie's denoising x0 = x + σ_min² s(x, σ_min) (NCSNv2, "final denoising"), which removes the
last level's noise. Classifier-free guidance mixes the scores: s = s_∅ + w (s_c - s_∅); autoguidance takes the weak
score from a guide network instead (:mod:`medgen.diffusion.guide`): s = s_guide + w (s_c - s_guide).

:class:`LangevinPipeline` is a :class:`~medgen.diffusion.pipeline.DiffusionPipeline`: batching, class lookup,
guidance, autocast, ``iter_generate`` / ``generate`` (and so ``SampleRunner`` and ``SampleGridHandler``) are the
parent's; only the sampling loop is new, and it uses the parent's hooks (``make_scheduler``, ``noise_shape``,
``finish``), so a pipeline over latents changes the space without repeating the loop. Every image draws its start
and its Langevin noise from its own ``torch.Generator(seed)``, so an image depends on its (class, seed, settings) and
not on the batch it was made in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.pipeline import DiffusionPipeline

SAMPLERS = ("pc", "als", "reverse", "dpmpp2m")


class LevelConditionedScore(nn.Module):
    """The score network seen through level indices: ``forward(x, i, class_labels) = s_θ(x, σ_i)``, so the
    parent pipeline's ``predict`` (integer timesteps, guidance, autocast) drives a σ-conditioned network."""

    def __init__(self, network: nn.Module, sigmas: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("sigmas", sigmas.detach().clone().float(), persistent=False)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None):
        return self.network(x, self.sigmas[timesteps.long()], class_labels=class_labels)


class LangevinPipeline(DiffusionPipeline):
    """Class-conditional sampling of a score network by annealed Langevin dynamics.

    Args:
        network: a :class:`~medgen.networks.score.ScoreNetwork` ``(x, sigma, class_labels=...)``; eval mode is set.
        scheduler: the :class:`NCSNScheduler` the network was trained with.
        classes, image_size, in_channels, device, precision, batch_size, null_class, channels_last: as in
            :class:`DiffusionPipeline`.
        sampler: default sampler, one of ``pc``, ``als``, ``reverse``, ``dpmpp2m``.
        n_steps_each: K, Langevin (corrector) steps per noise level.
        snr: corrector step size from the signal-to-noise ratio r (α = 2 (r ‖z‖/‖s‖)², Song et al. 2021);
            None uses NCSN's α_i = ``step_lr`` σ_i² / σ_min² instead.
        step_lr: ε of NCSN's step size (used when ``snr`` is None).
        denoise: end with Tweedie's denoising step.
        guide_network: a smaller, shorter-trained score network of the same task for autoguidance
            (:func:`medgen.diffusion.guide.load_guide`): guidance then moves from the guide's class-conditional score
            instead of the network's unconditional one, s = s_guide + w (s_c - s_guide).
        guidance_interval: as in :class:`DiffusionPipeline`; σ is the level's own.
    """

    def __init__(
        self,
        network: nn.Module,
        scheduler: NCSNScheduler,
        classes: Sequence[str],
        image_size: int | Sequence[int] = 128,
        in_channels: int = 1,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int | str | None = 16,
        null_class: int | None = None,
        channels_last: bool | None = None,
        sampler: str = "pc",
        n_steps_each: int = 1,
        snr: float | None = 0.16,
        step_lr: float = 6.2e-6,
        denoise: bool = True,
        guide_network: nn.Module | None = None,
        guidance_interval: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(scheduler, NCSNScheduler):
            raise TypeError(f"LangevinPipeline needs an NCSNScheduler (sigma levels), got {type(scheduler).__name__}")
        guide = None if guide_network is None else LevelConditionedScore(guide_network, scheduler.sigmas)
        if guide is not None and hasattr(guide_network, "weights_file"):
            guide.weights_file = guide_network.weights_file  # what SampleRunner records beside each image
        super().__init__(LevelConditionedScore(network, scheduler.sigmas), scheduler, classes, image_size,
                         in_channels, device, precision, batch_size, null_class, channels_last, guide,
                         guidance_interval)
        self.sampler = self.check_sampler(sampler)
        if n_steps_each < 0:
            raise ValueError(f"n_steps_each (Langevin steps per level) must be >= 0, got {n_steps_each}")
        if snr is not None and snr <= 0:
            raise ValueError(f"snr must be positive (or null to use step_lr), got {snr}")
        if step_lr <= 0:
            raise ValueError(f"step_lr must be positive, got {step_lr}")
        self.n_steps_each = int(n_steps_each)
        self.snr = snr
        self.step_lr = float(step_lr)
        self.denoise = denoise

    @staticmethod
    def check_sampler(name: str) -> str:
        if name not in SAMPLERS:
            raise ValueError(f"unknown Langevin sampler {name!r}; choose one of {list(SAMPLERS)}")
        return name

    def noise_level(self, t: int) -> float:
        """σ of level ``t``, the scheduler's own (a score model's levels are variance-exploding already)."""
        return float(self.train_scheduler.sigmas[int(t)])

    def make_scheduler(self, name: str) -> NCSNScheduler:
        """A copy of the training scheduler (``set_timesteps`` must not touch it): every sampler walks its levels."""
        return copy.copy(self.train_scheduler)

    def start(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """x ~ N(0, σ_max² I) and the per-image generators that go on to draw its Langevin noise."""
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.draw_noise(generators) * self.train_scheduler.sigma_max, generators

    def draw_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One :attr:`noise_shape` draw from each image's generator."""
        return torch.stack([torch.randn(self.noise_shape, generator=g) for g in generators]).to(self.device)

    def corrector(self, scheduler: NCSNScheduler, x: torch.Tensor, t: int, labels: torch.Tensor,
                  guidance_scale: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """K Langevin steps at level t."""
        for _ in range(self.n_steps_each):
            score = self.predict(x, t, labels, guidance_scale)
            noise = self.draw_noise(generators)
            if self.snr is not None:
                alpha = scheduler.snr_step_size(score, noise, self.snr)
            else:
                alpha = scheduler.langevin_step_size(t, self.step_lr)
            x = scheduler.langevin_step(score, x, alpha, noise)
        return x

    def network_passes(self, num_inference_steps: int, sampler: str | None = None) -> int:
        """Times one image goes through the network in :meth:`run_sampler` over ``num_inference_steps`` levels: K
        corrector steps per level (pc, als), a predictor or ODE step between levels (pc, reverse, dpmpp2m) and the
        final denoising."""
        sampler = self.check_sampler(sampler or self.sampler)
        levels = int(num_inference_steps)
        corrector = levels * self.n_steps_each if sampler in ("pc", "als") else 0
        between = levels - 1 if sampler in ("pc", "reverse", "dpmpp2m") else 0
        return corrector + between + int(self.denoise)

    @torch.inference_mode()
    def run_sampler(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        num_inference_steps: int = 100,
        guidance_scale: float = 1.0,
        sampler: str | None = None,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The state after the last level (and Tweedie's denoising), ``(N, *noise_shape)``, before :meth:`finish`;
        ``num_inference_steps`` is the number of noise levels visited (the network runs about ``levels x (K + 1)``
        times)."""
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
        sampler = self.check_sampler(sampler or self.sampler)
        scheduler = self.make_scheduler(sampler)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        cls = torch.as_tensor([int(v) for v in labels], device=self.device, dtype=torch.long)
        x, generators = self.start(seeds)
        timesteps = [int(t) for t in scheduler.timesteps]
        previous = None
        for i, t in enumerate(tqdm(timesteps, desc=f"sampling ({sampler})", leave=False, disable=not progress)):
            if sampler == "dpmpp2m" and i < len(timesteps) - 1:
                x, x0 = scheduler.ode_step(self.predict(x, t, cls, guidance_scale), t, x, previous)
                previous = (x0, t)
            if sampler in ("pc", "als"):
                x = self.corrector(scheduler, x, t, cls, guidance_scale, generators)
            if sampler in ("pc", "reverse") and i < len(timesteps) - 1:
                score = self.predict(x, t, cls, guidance_scale)
                x, _ = scheduler.step(score, t, x, noise=self.draw_noise(generators))
            if callback is not None:
                callback(i + 1, len(timesteps))
        if self.denoise:
            x = scheduler.denoise(self.predict(x, timesteps[-1], cls, guidance_scale), timesteps[-1], x)
        return x

    @torch.inference_mode()
    def generate_batch(self, labels: Sequence[int], seeds: Sequence[int], num_inference_steps: int = 100,
                       guidance_scale: float = 1.0, sampler: str | None = None, progress: bool = False,
                       callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """As :meth:`DiffusionPipeline.generate_batch` (images in [-1, 1]), with this pipeline's default sampler."""
        return self.finish(self.run_sampler(labels, seeds, num_inference_steps, guidance_scale, sampler, progress,
                                            callback))

    def iter_generate(self, labels: Sequence[int], seeds: Sequence[int], num_inference_steps: int = 100,
                      guidance_scale: float = 1.0, sampler: str | None = None, progress: bool = True,
                      callback: Callable[[int, int], None] | None = None,
                      ) -> Iterator[tuple[list[int], list[int], torch.Tensor]]:
        """As :meth:`DiffusionPipeline.iter_generate`, with this pipeline's default sampler."""
        yield from super().iter_generate(labels, seeds, num_inference_steps, guidance_scale,
                                         sampler or self.sampler, progress, callback)

    def generate(self, labels: Sequence[int], seeds: Sequence[int], num_inference_steps: int = 100,
                 guidance_scale: float = 1.0, sampler: str | None = None, progress: bool = False) -> torch.Tensor:
        """All images at once (the sample-grid handler's call), with this pipeline's default sampler."""
        return super().generate(labels, seeds, num_inference_steps, guidance_scale, sampler or self.sampler,
                                progress)
