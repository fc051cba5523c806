"""Latent sampling: noise, solvers, guidance and seeds in latent space; pixel images out, written like any others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from latent_helpers import CLASSES, IMAGE_SIZE, tiny_unet
from monai.networks.schedulers import DDPMScheduler
from PIL import Image

import medgen.diffusion.pipeline as pixel
from medgen.diffusion.langevin import LangevinPipeline
from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.sample_run import SampleRunner
from medgen.engine.handlers import SampleGridHandler
from medgen.latent import LatentDiffusionPipeline, LatentLangevinPipeline, latent_scheduler
from medgen.networks.score import ScoreNetwork


def ddpm_pipeline(cxr: dict, prediction_type: str = "epsilon", **kw) -> LatentDiffusionPipeline:
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    return LatentDiffusionPipeline(tiny_unet(3), scheduler, cxr["autoencoder"], cxr["cache"].scale_factor, CLASSES,
                                   image_size=IMAGE_SIZE, precision="fp32", **kw)


def langevin_pipeline(cxr: dict, **kw) -> LatentLangevinPipeline:
    scheduler = NCSNScheduler(10, sigma_max=20.0, sigma_min=0.01)
    network = ScoreNetwork(tiny_unet(3), sigma_data=1.0)
    return LatentLangevinPipeline(network, scheduler, cxr["autoencoder"], cxr["cache"].scale_factor, CLASSES,
                                  image_size=IMAGE_SIZE, precision="fp32", **kw)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_samples_are_decoded_pixel_images(cxr: dict, sampler: str, prediction_type: str) -> None:
    pipe = ddpm_pipeline(cxr, prediction_type, batch_size=4)
    assert (pipe.image_size, pipe.in_channels, pipe.latent_shape) == ((32, 32), 1, (3, 16, 16))
    images = pipe.generate([0, 1], [0, 1], 3, guidance_scale=2.0, sampler=sampler)
    assert images.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(images).all() and images.abs().max() <= 1.0


def test_latents_are_divided_by_the_scale_factor_and_decoded(cxr: dict) -> None:
    pipe = ddpm_pipeline(cxr)
    latents = pipe.sample_latents([0, 1], [3, 4], 3)
    assert latents.shape == (2, 3, 16, 16)
    with torch.inference_mode():
        expected = cxr["autoencoder"].decode_stage_2_outputs(latents / pipe.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(pipe.generate_batch([0, 1], [3, 4], 3), expected)


def test_latent_samplers_do_not_clip_to_the_pixel_range() -> None:
    for name in ("ddim", "ddpm", "dpmpp2m"):
        assert latent_scheduler(name, DDPMScheduler(num_train_timesteps=1000)).clip_sample is False
    assert pixel.make_scheduler("ddim", DDPMScheduler(num_train_timesteps=1000)).clip_sample is True


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_an_image_depends_on_its_seed_not_on_its_batch(cxr: dict, sampler: str) -> None:
    pipe = ddpm_pipeline(cxr, batch_size=4)
    together = pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], 4, guidance_scale=1.5, sampler=sampler)
    pipe.batch_size = 1
    alone = pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], 4, guidance_scale=1.5, sampler=sampler)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[2])


@pytest.mark.parametrize(("route", "sampler"), [("diffusion", "dpmpp2m"), ("score", "pc"), ("score", "dpmpp2m")])
def test_sample_runner_writes_pngs_metadata_and_grids(cxr: dict, tmp_path: Path, route: str, sampler: str) -> None:
    weights = tmp_path / "model.pt"
    pipe = ddpm_pipeline(cxr, batch_size=3) if route == "diffusion" else langevin_pipeline(cxr, batch_size=3)
    torch.save(pipe.network.state_dict(), weights)
    out = tmp_path / "samples"
    SampleRunner(pipe, out, per_class=2, sampler=sampler, num_inference_steps=3, checkpoint=weights).run()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["class"], r["seed"]) for r in records] == [("NORMAL", 0), ("NORMAL", 1), ("PNEUMONIA", 2),
                                                           ("PNEUMONIA", 3)]
    for r in records:
        with Image.open(out / r["file"]) as im:
            assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "L"
        unit = np.load((out / r["file"]).with_suffix(".npy"))
        assert unit.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and 0.0 <= unit.min() and unit.max() <= 1.0
    assert (out / "grid_NORMAL.png").is_file() and (out / "grid_PNEUMONIA.png").is_file()


def test_the_training_grid_handler_draws_decoded_samples(cxr: dict, tmp_path: Path) -> None:
    engine = Engine(lambda *_: None)
    engine.state.epoch = 5
    handler = SampleGridHandler(lambda: ddpm_pipeline(cxr), CLASSES, tmp_path, per_class=2, num_inference_steps=2)
    handler(engine)
    with Image.open(handler.last_path) as im:
        assert im.size[0] >= 2 * IMAGE_SIZE and im.size[1] >= 2 * IMAGE_SIZE


def test_auto_batch_size_counts_the_decoder(cxr: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = ddpm_pipeline(cxr, batch_size="auto")
    device = torch.device("cpu")
    unet = pixel.activation_bytes_per_image(pipe.network, pipe.latent_shape, device, None)
    pixels_out = 1 * IMAGE_SIZE * IMAGE_SIZE * 4
    monkeypatch.setattr(pixel, "available_memory", lambda _d: 2 * 10 * (2 * unet + pixels_out))
    # without the decoder 10 would fit; its activations (at least the decoded image) take some of the room
    assert 1 <= pipe.batch_size < 10
    assert pixel.auto_batch_size(pipe.network, pipe.latent_shape, device, None) >= 10
    decoder = pipe.finish_bytes_per_image()
    assert decoder >= pixels_out
    assert pipe.batch_size == pixel.auto_batch_size(pipe.network, pipe.latent_shape, device, None,
                                                    extra_bytes_per_image=decoder)


def test_langevin_route_samples_latents_and_decodes(cxr: dict) -> None:
    pipe = langevin_pipeline(cxr, batch_size=4, sampler="pc")
    assert isinstance(pipe, LangevinPipeline) and pipe.latent_shape == (3, 16, 16)
    images = pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], 4)
    assert images.shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE) and images.abs().max() <= 1.0
    pipe.batch_size = 1
    torch.testing.assert_close(pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], 4), images, atol=1e-5, rtol=1e-5)
    latents = pipe.sample_latents([0], [5], 4)
    assert latents.shape == (1, 3, 16, 16) and latents.abs().max() > 1.0  # not clipped in latent space
    with torch.inference_mode():
        expected = cxr["autoencoder"].decode_stage_2_outputs(latents / pipe.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(images[:1], expected, atol=1e-5, rtol=1e-5)


class GaussianLatentNoise(torch.nn.Module):
    """The exact epsilon of latents N(mean, std^2) on a VP schedule: what a perfectly trained network predicts."""

    in_channels = 3

    def __init__(self, scheduler: DDPMScheduler, mean: float, std: float) -> None:
        super().__init__()
        self.alphas_cumprod, self.mean, self.std = scheduler.alphas_cumprod, mean, std

    def forward(self, x, timesteps, context=None, class_labels=None):
        a = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.mean) * (1 - a).sqrt() / (a * self.std**2 + 1 - a)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_latents_beyond_the_pixel_range_are_sampled_faithfully(cxr: dict, sampler: str) -> None:
    # scaled latents are unit-variance, not in [-1, 1]: a sampler that clipped x0 would pull this mean of 2 to 1
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pipe = LatentDiffusionPipeline(GaussianLatentNoise(scheduler, 2.0, 0.5), scheduler, cxr["autoencoder"], 1.0,
                                   CLASSES, image_size=IMAGE_SIZE, precision="fp32", batch_size=16)
    latents = pipe.sample_latents([0] * 16, list(range(16)), 50, sampler=sampler)
    assert latents.mean().item() == pytest.approx(2.0, abs=0.05)  # DDIM-50's discretisation error is ~0.03
    assert latents.std().item() == pytest.approx(0.5, rel=0.06)


def test_bf16_sampling_decodes_to_fp32_images(cxr: dict) -> None:
    images = LatentDiffusionPipeline(tiny_unet(3), DDPMScheduler(1000), cxr["autoencoder"], 1.0, CLASSES,
                                     image_size=IMAGE_SIZE, precision="bf16").generate([0], [0], 2)
    assert images.dtype == torch.float32 and images.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(images).all() and images.abs().max() <= 1.0


class GaussianLatentScore(torch.nn.Module):
    """The exact score of latents N(mean, std^2) smoothed by sigma (VE noise)."""

    in_channels = 3

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x, sigma, class_labels=None):
        return -(x - self.mean) / (self.std**2 + sigma.view(-1, 1, 1, 1) ** 2)


def test_langevin_latents_beyond_the_pixel_range_are_sampled_faithfully(cxr: dict) -> None:
    scheduler = NCSNScheduler(200, sigma_max=10.0, sigma_min=0.01)
    pipe = LatentLangevinPipeline(GaussianLatentScore(2.0, 0.5), scheduler, cxr["autoencoder"], 1.0, CLASSES,
                                  image_size=IMAGE_SIZE, precision="fp32", batch_size=16, sampler="reverse")
    latents = pipe.sample_latents([0] * 16, list(range(16)), 200)
    assert latents.mean().item() == pytest.approx(2.0, abs=0.02)
    assert latents.std().item() == pytest.approx(0.5, rel=0.05)
