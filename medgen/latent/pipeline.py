"""Sampling in latent space, decoding to pixel images at the end (MONAI ``LatentDiffusionInferer`` semantics).

:class:`LatentDiffusionPipeline` (DDPM / DDIM / DPM-Solver++ on a VP schedule) and :class:`LatentLangevinPipeline`
(annealed Langevin / predictor-corrector on an NCSN score network) are the pixel pipelines with three differences,
each one of the pixel pipelines' hooks (``noise_shape``, ``make_scheduler``, ``finish``), so no sampling loop is
written here:

- the noise is latent-shaped, ``(latent_channels, H / f, W / f)``, one ``torch.Generator(seed)`` per image as before,
  so an image still depends only on its (class, seed, settings) with a deterministic sampler;
- nothing is clipped in latent space: the predicted x0 is not clamped to [-1, 1] (latents have unit variance, not
  that range; MONAI's latent Model Zoo bundles sample with ``clip_sample: false``) and the final latents are not;
- after the last step the latents are divided by the scale factor, decoded by ``decode_stage_2_outputs`` and
  clipped to [-1, 1].

``image_size``, ``in_channels``, ``classes``, ``batch_size``, ``iter_generate`` and ``generate`` report and return the
pixel images, so ``SampleRunner`` (PNGs, ``samples.jsonl``, grids), ``SampleGridHandler``, evaluation, DICOM export
and the service use either route alike. ``batch_size="auto"`` counts the decoder's activations beside the
guidance-doubled diffusion network's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import Scheduler

from medgen.diffusion import pipeline as pixel
from medgen.diffusion.langevin import LangevinPipeline
from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.precision import autocast
from medgen.latent.checks import AutoencoderFacts, LatentConfigError, check_latent_config, network_in_channels


def latent_scheduler(name: str, train_scheduler: Scheduler) -> Scheduler:
    """:func:`medgen.diffusion.pipeline.make_scheduler`'s sampler with x0 clipping off (latents are not in [-1, 1])."""
    scheduler = pixel.make_scheduler(name, train_scheduler)
    if hasattr(scheduler, "clip_sample"):
        scheduler.clip_sample = False
    return scheduler


class _Decoder(torch.nn.Module):
    """The autoencoder's decoder called as a diffusion network is (``(z, t)``), to measure its activations."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor, _timesteps: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(z)


class LatentDecoding:
    """What both latent pipelines change in their pixel parent, through its hooks: the noise is latent-shaped,
    :meth:`finish` decodes, and ``batch_size="auto"`` counts the decoder."""

    autoencoder: torch.nn.Module
    scale_factor: float
    latent_shape: tuple[int, ...]
    facts: AutoencoderFacts

    def _set_latent(self, autoencoder: torch.nn.Module, scale_factor: float, latent_channels: int | None,
                    downsampling_factor: int | None) -> None:
        facts = AutoencoderFacts.of(autoencoder)
        for key, value, actual in (("latent_channels", latent_channels, facts.latent_channels),
                                   ("downsampling_factor", downsampling_factor, facts.downsampling_factor)):
            if value is not None and int(value) != actual:
                raise LatentConfigError(f"config key '{key}' is {value} but the autoencoder's is {actual}: set "
                                        f"{key} {actual} (or null) or give the autoencoder it was meant for")
        check_latent_config(facts, self.image_size, network_in_channels(self.network), channels=self.in_channels,
                            config_file="the sampling settings")
        if not scale_factor or scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive (1 / std of the training latents), got {scale_factor!r}")
        self.facts = facts
        self.autoencoder = autoencoder.to(self.device).eval()
        self.scale_factor = float(scale_factor)
        self.latent_shape = facts.latent_shape(self.image_size)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The sampler's state of one image: :attr:`latent_shape`."""
        return self.latent_shape

    def finish(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel images in [-1, 1] from scaled latents: ``decode_stage_2_outputs(z / scale_factor)``, clipped."""
        with autocast(self.device, self.dtype):
            images = self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)
        return images.float().clamp(-1.0, 1.0)

    def finish_bytes_per_image(self) -> int:
        """The decoder's activations per image (``batch_size="auto"`` adds them to the diffusion network's)."""
        return pixel.activation_bytes_per_image(_Decoder(self.autoencoder), self.latent_shape, self.device,
                                                self.dtype)

    def sample_latents(self, labels: Sequence[int], seeds: Sequence[int], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Scaled latents ``(N, *latent_shape)`` after the last step, before decoding: the parent's ``run_sampler``
        (same arguments as ``generate_batch``)."""
        return self.run_sampler(labels, seeds, *args, **kwargs)


class LatentDiffusionPipeline(LatentDecoding, pixel.DiffusionPipeline):
    """Class-conditional latent diffusion sampling with classifier-free guidance; returns decoded pixel images.

    Args:
        network: the diffusion UNet over latents (``in_channels`` = the autoencoder's latent channels).
        scheduler: the training noise scheduler.
        autoencoder: the frozen MONAI ``AutoencoderKL`` (eval mode is set).
        scale_factor: the latents' scale factor the network was trained with (:attr:`LatentCache.scale_factor`).
        classes: class names, index = label.
        image_size: pixel size of the decoded images (a multiple of the autoencoder's downsampling factor).
        in_channels: pixel channels (default: the autoencoder's).
        latent_channels, downsampling_factor: checked against the autoencoder when given.
        device, precision, batch_size, null_class, channels_last, guide_network, guidance_interval: as
            :class:`~medgen.diffusion.DiffusionPipeline` (a guide over the same latents; σ of the scaled latents).
    """

    def __init__(self, network: torch.nn.Module, scheduler: Scheduler, autoencoder: torch.nn.Module,
                 scale_factor: float, classes: Sequence[str], image_size: int | Sequence[int] = 64,
                 in_channels: int | None = None, device: str | torch.device = "cpu", precision: str = "auto",
                 batch_size: int | str | None = 16, null_class: int | None = None, channels_last: bool | None = None,
                 latent_channels: int | None = None, downsampling_factor: int | None = None,
                 guide_network: torch.nn.Module | None = None,
                 guidance_interval: Sequence[float] | None = None) -> None:
        channels = AutoencoderFacts.of(autoencoder).channels if in_channels is None else in_channels
        super().__init__(network, scheduler, classes, image_size, channels, device, precision, batch_size,
                         null_class, channels_last, guide_network, guidance_interval)
        self._set_latent(autoencoder, scale_factor, latent_channels, downsampling_factor)

    def make_scheduler(self, name: str) -> Scheduler:
        """:func:`latent_scheduler`: the pixel sampler without x0 clipping."""
        return latent_scheduler(name, self.train_scheduler)


class LatentLangevinPipeline(LatentDecoding, LangevinPipeline):
    """Annealed Langevin / predictor-corrector sampling of a score network on latents; returns decoded images.

    Args:
        network: the :class:`~medgen.networks.score.ScoreNetwork` over latents.
        scheduler: the :class:`~medgen.diffusion.ncsn.NCSNScheduler` it was trained with (sigmas in scaled-latent
            units).
        autoencoder, scale_factor, latent_channels, downsampling_factor: as :class:`LatentDiffusionPipeline`.
        classes, image_size, in_channels, device, precision, batch_size, null_class, channels_last, sampler,
            n_steps_each, snr, step_lr, denoise, guide_network, guidance_interval: as
            :class:`~medgen.diffusion.langevin.LangevinPipeline` (a guide over the same latents).
    """

    def __init__(self, network: torch.nn.Module, scheduler: NCSNScheduler, autoencoder: torch.nn.Module,
                 scale_factor: float, classes: Sequence[str], image_size: int | Sequence[int] = 128,
                 in_channels: int | None = None, device: str | torch.device = "cpu", precision: str = "auto",
                 batch_size: int | str | None = 16, null_class: int | None = None, channels_last: bool | None = None,
                 sampler: str = "pc", n_steps_each: int = 1, snr: float | None = 0.16, step_lr: float = 6.2e-6,
                 denoise: bool = True, latent_channels: int | None = None,
                 downsampling_factor: int | None = None, guide_network: torch.nn.Module | None = None,
                 guidance_interval: Sequence[float] | None = None) -> None:
        channels = AutoencoderFacts.of(autoencoder).channels if in_channels is None else in_channels
        super().__init__(network, scheduler, classes, image_size, channels, device, precision, batch_size,
                         null_class, channels_last, sampler, n_steps_each, snr, step_lr, denoise, guide_network,
                         guidance_interval)
        self._set_latent(autoencoder, scale_factor, latent_channels, downsampling_factor)
