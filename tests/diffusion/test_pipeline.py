"""The sampling pipeline: per-seed reproducibility, the compute path it picks, batch sizing, inference mode."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

import medgen.diffusion.pipeline as pipeline_module
import medgen.diffusion.precision as precision
from medgen.diffusion.pipeline import DiffusionPipeline, auto_batch_size
from medgen.networks import ConditionalDiffusionUNet


def tiny_unet() -> ConditionalDiffusionUNet:
    torch.manual_seed(0)
    return ConditionalDiffusionUNet(
        channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8
    )


def make_pipeline(precision_name: str = "fp32", prediction_type: str = "epsilon", **kw) -> DiffusionPipeline:
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    return DiffusionPipeline(
        tiny_unet(), scheduler, ["NORMAL", "PNEUMONIA"], image_size=16, precision=precision_name, **kw
    )


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_an_image_depends_on_its_seed_not_on_its_batch(sampler: str) -> None:
    pipe = make_pipeline(batch_size=4)
    together = pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], num_inference_steps=4, sampler=sampler)
    pipe.batch_size = 1
    alone = pipe.generate([0, 1, 0, 1], [5, 6, 7, 8], num_inference_steps=4, sampler=sampler)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (4, 1, 16, 16) and together.abs().max() <= 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_epsilon_and_v_prediction_networks_sample(prediction_type: str, sampler: str) -> None:
    images = make_pipeline(prediction_type=prediction_type).generate([0, 1], [0, 1], 3, sampler=sampler)
    assert torch.isfinite(images).all() and images.abs().max() <= 1.0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m"])
def test_network_passes_counts_what_the_sampler_runs(sampler: str) -> None:
    pipe = make_pipeline(batch_size=2)
    calls = []
    pipe.network.register_forward_hook(lambda *_: calls.append(1))
    pipe.generate([0, 1], [0, 1], 7, sampler=sampler)
    assert len(calls) == pipe.network_passes(7, sampler) == 7


def test_bf16_path_runs_channels_last_and_stays_close_to_fp32() -> None:
    fp32 = make_pipeline("fp32")
    bf16 = make_pipeline("bf16")
    assert fp32.compute_path == "cpu fp32" and not fp32.channels_last
    assert bf16.compute_path == "cpu bf16-autocast channels_last"
    assert bf16.network.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last)
    a = fp32.generate([0, 1], [3, 4], 5, sampler="dpmpp2m")
    b = bf16.generate([0, 1], [3, 4], 5, sampler="dpmpp2m")
    assert (a - b).abs().mean() < 0.05


@pytest.mark.parametrize("has_bf16, expected", [(True, "cpu bf16-autocast channels_last"), (False, "cpu fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, has_bf16: bool, expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: has_bf16)
    assert make_pipeline("auto").compute_path == expected


def test_sampling_runs_in_inference_mode() -> None:
    pipe = make_pipeline()
    images = pipe.generate_batch([0], [0], num_inference_steps=2)
    assert images.is_inference() and not images.requires_grad


def test_auto_batch_size_fits_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_unet().eval()
    device = torch.device("cpu")
    per_image = pipeline_module.activation_bytes_per_image(net, (1, 16, 16), device, None)
    assert per_image > 16 * 16 * 4
    monkeypatch.setattr(pipeline_module, "available_memory", lambda _d: 10 * 2 * per_image)
    assert auto_batch_size(net, (1, 16, 16), device, None) == 5  # half of the memory, guidance doubles the batch
    monkeypatch.setattr(pipeline_module, "available_memory", lambda _d: 1)
    assert auto_batch_size(net, (1, 16, 16), device, None) == 1
    monkeypatch.setattr(pipeline_module, "available_memory", lambda _d: 1 << 50)
    assert auto_batch_size(net, (1, 16, 16), device, None) == 32  # the CPU cap


def test_auto_batch_size_is_used_by_iter_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "auto_batch_size", lambda *a, **k: 3)
    pipe = make_pipeline(batch_size="auto")
    sizes = [len(seeds) for _, seeds, _ in pipe.iter_generate([0] * 7, list(range(7)), 2, progress=False)]
    assert sizes == [3, 3, 1]
    with pytest.raises(ValueError, match="batch_size"):
        make_pipeline(batch_size=0)
