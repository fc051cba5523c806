"""The pipelines' hooks (sampling scheduler, noise shape, finish, the finish's memory): the pixel pipelines still make
exactly the images of the scheduler loop they stand for from the same seeds, and the latent pipelines are that same
loop over latents, decoded."""

from __future__ import annotations

import copy

import pytest
import torch
from latent_helpers import tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

import medgen.diffusion.pipeline as pixel
from medgen.diffusion.langevin import LangevinPipeline
from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.solvers import dpm_solver_pp_2m
from medgen.latent import LatentDiffusionPipeline, LatentLangevinPipeline
from medgen.networks.score import ScoreNetwork

CLASSES = ["a", "b"]
LABELS, SEEDS, GUIDANCE, STEPS = [0, 1, 0], [3, 4, 11], 2.0, 4
PIXEL_SHAPE, LATENT_SHAPE, SCALE = (1, 16, 16), (3, 8, 8), 0.8
VP_SAMPLERS = ("ddim", "ddpm", "dpmpp2m")


def vp_scheduler(name: str, clip: bool) -> Scheduler:
    """MONAI's DDIM / DDPM (medgen's DPM-Solver++ for dpmpp2m) on the default schedule; the pixel route clips x0."""
    if name == "dpmpp2m":
        scheduler = dpm_solver_pp_2m(DDPMScheduler(1000))
        scheduler.clip_sample = clip
        return scheduler
    return {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[name](1000, clip_sample=clip)


def seeded_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def guided(network: torch.nn.Module, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, conditional half first, null class 2."""
    labels = torch.tensor(LABELS)
    out = network(torch.cat([x, x]), torch.cat([level, level]),
                  class_labels=torch.cat([labels, torch.full_like(labels, len(CLASSES))])).float()
    cond, uncond = out.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


@torch.inference_mode()
def vp_loop(network: torch.nn.Module, scheduler: Scheduler, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise from each seed stepped by the scheduler (DDPM's noise from one generator seeded by the first seed + 1)."""
    scheduler.set_timesteps(STEPS)
    x = seeded_noise(shape, [torch.Generator().manual_seed(s) for s in SEEDS])
    generator = torch.Generator().manual_seed(SEEDS[0] + 1)
    for t in scheduler.timesteps:
        level = torch.full((len(SEEDS),), int(t), dtype=torch.long)
        x, _ = scheduler.step(guided(network.eval(), x, level), int(t), x, generator=generator)
    return x


@torch.inference_mode()
def langevin_loop(score: torch.nn.Module, scheduler: NCSNScheduler, shape: tuple[int, ...], snr: float) -> torch.Tensor:
    """Predictor-corrector with one corrector step per level and Tweedie's denoising; each image's start and noise
    from its own seeded generator."""
    scheduler = copy.copy(scheduler)
    scheduler.set_timesteps(STEPS)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    x = seeded_noise(shape, generators) * scheduler.sigma_max
    levels = [int(t) for t in scheduler.timesteps]

    def s(x: torch.Tensor, t: int) -> torch.Tensor:
        return guided(score.eval(), x, scheduler.sigmas.float()[torch.full((len(SEEDS),), t)])

    for i, t in enumerate(levels):
        grad, noise = s(x, t), seeded_noise(shape, generators)
        x = scheduler.langevin_step(grad, x, scheduler.snr_step_size(grad, noise, snr), noise)
        if i < len(levels) - 1:
            x, _ = scheduler.step(s(x, t), t, x, noise=seeded_noise(shape, generators))
    return scheduler.denoise(s(x, levels[-1]), levels[-1], x)


@torch.inference_mode()
def decoded(autoencoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    return autoencoder.eval().decode_stage_2_outputs(latents / SCALE).clamp(-1, 1)


@pytest.mark.parametrize("sampler", VP_SAMPLERS)
def test_pixel_images_are_the_scheduler_loop_from_the_same_seeds(sampler: str) -> None:
    unet = tiny_unet(1)
    pipe = pixel.DiffusionPipeline(unet, DDPMScheduler(1000), CLASSES, 16, precision="fp32", batch_size=3)
    images = pipe.generate(LABELS, SEEDS, STEPS, guidance_scale=GUIDANCE, sampler=sampler)
    assert torch.equal(images, vp_loop(unet, vp_scheduler(sampler, True), PIXEL_SHAPE).clamp(-1, 1))


@pytest.mark.parametrize("sampler", VP_SAMPLERS)
def test_latent_images_are_the_unclipped_scheduler_loop_decoded(sampler: str) -> None:
    unet, autoencoder = tiny_unet(3), tiny_autoencoder()
    pipe = LatentDiffusionPipeline(unet, DDPMScheduler(1000), autoencoder, SCALE, CLASSES, 16, precision="fp32",
                                   batch_size=3)
    latents = vp_loop(unet, vp_scheduler(sampler, False), LATENT_SHAPE)
    assert torch.equal(pipe.sample_latents(LABELS, SEEDS, STEPS, GUIDANCE, sampler), latents)
    assert torch.equal(pipe.generate(LABELS, SEEDS, STEPS, guidance_scale=GUIDANCE, sampler=sampler),
                       decoded(autoencoder, latents))


@pytest.mark.parametrize("route", ["pixel", "latent"])
def test_langevin_images_are_the_predictor_corrector_loop_from_the_same_seeds(route: str) -> None:
    scheduler = NCSNScheduler(10, sigma_max=20.0, sigma_min=0.01)
    score = ScoreNetwork(tiny_unet(1 if route == "pixel" else 3), sigma_data=1.0)
    kw = {"precision": "fp32", "batch_size": 3, "sampler": "pc", "snr": 0.16}
    if route == "pixel":
        pipe = LangevinPipeline(score, scheduler, CLASSES, 16, **kw)
        expected = langevin_loop(score, scheduler, PIXEL_SHAPE, 0.16).clamp(-1, 1)
    else:
        autoencoder = tiny_autoencoder()
        pipe = LatentLangevinPipeline(score, scheduler, autoencoder, SCALE, CLASSES, 16, **kw)
        expected = decoded(autoencoder, langevin_loop(score, scheduler, LATENT_SHAPE, 0.16))
    assert torch.equal(pipe.generate(LABELS, SEEDS, STEPS, guidance_scale=GUIDANCE), expected)
    assert len(scheduler.timesteps) == 10  # the training scheduler's levels are untouched


def test_the_hooks_of_each_route() -> None:
    train = DDPMScheduler(1000)
    plain = pixel.DiffusionPipeline(tiny_unet(1), train, CLASSES, 16)
    latent = LatentDiffusionPipeline(tiny_unet(3), train, tiny_autoencoder(), SCALE, CLASSES, 16)
    assert (plain.noise_shape, latent.noise_shape) == (PIXEL_SHAPE, LATENT_SHAPE)
    assert plain.make_scheduler("ddim").clip_sample and not latent.make_scheduler("ddim").clip_sample
    assert plain.finish(torch.full((1, *PIXEL_SHAPE), 3.0)).max() == 1.0
    assert latent.finish(torch.zeros(1, *LATENT_SHAPE)).shape == (1, *PIXEL_SHAPE)
    assert plain.finish_bytes_per_image() == 0
    assert latent.finish_bytes_per_image() >= 4 * 16 * 16  # at least the decoded fp32 image
