"""TorchScript and ONNX exports agree with the PyTorch network, and onnxruntime samples like the torch pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen.diffusion import DiffusionPipeline
from medgen.networks import ConditionalDiffusionUNet
from medgen.networks.export import (
    DiffusionNetworkWrapper,
    example_inputs,
    export_onnx,
    export_torchscript,
    max_abs_diff_onnx,
    max_abs_diff_torchscript,
    metadata_inputs,
    sampling_metadata,
)

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]
IMAGE_SHAPE = (1, 16, 16)
CLASSES = ["NORMAL", "PNEUMONIA"]


def tiny_unet(seed: int = 0) -> ConditionalDiffusionUNet:
    """A small UNet with attention, its weights randomised (MONAI zero-initialises the output convolution, which
    would make every comparison trivially exact). Larger random weights make the sampling chain chaotic: float32
    rounding differences of 1e-7 per step then grow to O(1) over 20 guided steps, with or without ONNX."""
    torch.manual_seed(seed)
    net = ConditionalDiffusionUNet(
        num_classes=2,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> ConditionalDiffusionUNet:
    return tiny_unet()


@pytest.fixture(scope="module")
def scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=0.0001, beta_end=0.02)


@pytest.fixture(scope="module")
def onnx_file(
    net: ConditionalDiffusionUNet, scheduler: DDPMScheduler, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    metadata = sampling_metadata(scheduler, CLASSES, IMAGE_SHAPE)
    return export_onnx(net, path, example_inputs(IMAGE_SHAPE, 2), metadata=metadata)


def test_wrapper_takes_all_inputs_positionally_and_ints_for_the_batch(net: ConditionalDiffusionUNet) -> None:
    image, timesteps, labels = example_inputs(IMAGE_SHAPE, 2)
    wrapper = DiffusionNetworkWrapper(net).eval()
    with torch.no_grad():
        expected = net(image, timesteps, class_labels=labels)
        assert torch.equal(wrapper(image, timesteps, labels), expected)
        same_step = wrapper(image, 500, 1)
        assert torch.equal(same_step, net(image, torch.tensor([500, 500]), class_labels=torch.tensor([1, 1])))
        assert torch.equal(wrapper(image, 500), net(image, torch.tensor([500, 500])))  # null class


def test_wrapper_loads_a_plain_network_state_dict(net: ConditionalDiffusionUNet) -> None:
    wrapper = DiffusionNetworkWrapper(tiny_unet(seed=1))
    wrapper.load_state_dict(net.state_dict())
    image, timesteps, labels = example_inputs(IMAGE_SHAPE, 2)
    with torch.no_grad():
        assert torch.equal(wrapper.eval()(image, timesteps, labels), net(image, timesteps, class_labels=labels))
    wrapper.load_state_dict(wrapper.state_dict())  # its own, prefixed keys, too


def test_metadata_inputs_follow_network_data_format() -> None:
    fmt = json.loads((REPO / "bundles" / "cxr_ddpm" / "configs" / "metadata.json").read_text())["network_data_format"]
    inputs = metadata_inputs(fmt, batch_size=4)
    assert list(inputs) == ["image", "timesteps", "class_labels"]
    assert inputs["image"].shape == (4, 1, 64, 64) and inputs["image"].dtype == torch.float32
    assert inputs["image"].min() >= -1 and inputs["image"].max() <= 1
    assert inputs["timesteps"].shape == (4,) and inputs["timesteps"].dtype == torch.int64
    assert int(inputs["class_labels"].min()) >= 0 and int(inputs["class_labels"].max()) <= 2


@pytest.mark.slow
def test_torchscript_trace_matches_pytorch_at_other_batch_sizes(net: ConditionalDiffusionUNet, tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    export_torchscript(net, path, example_inputs(IMAGE_SHAPE, 2), meta_values={"version": "0.1.0"})
    for batch in (1, 3):
        diff = max_abs_diff_torchscript(path, net, example_inputs(IMAGE_SHAPE, batch, seed=batch))
        assert diff < 1e-5
    from monai.data import load_net_with_metadata

    _, meta, _ = load_net_with_metadata(str(path))
    assert meta["version"] == "0.1.0"


@pytest.mark.slow
def test_onnx_matches_pytorch_with_a_dynamic_batch(net: ConditionalDiffusionUNet, onnx_file: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_file))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["image", "timesteps", "class_labels"]
    for batch in (1, 2, 5):
        assert max_abs_diff_onnx(onnx_file, net, example_inputs(IMAGE_SHAPE, batch, seed=batch)) < 1e-4


def test_onnx_export_refuses_an_old_opset(net: ConditionalDiffusionUNet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 17"):
        export_onnx(net, tmp_path / "m.onnx", example_inputs(IMAGE_SHAPE, 2), opset_version=13)


@pytest.mark.slow
def test_onnx_ddim_timesteps_are_monai_ddim_timesteps(onnx_file: Path) -> None:
    from medgen.onnx_sampling import OnnxDDIMSampler

    sampler = OnnxDDIMSampler(onnx_file)
    reference = DDIMScheduler(num_train_timesteps=1000)
    for steps in (10, 50, 1000):
        reference.set_timesteps(steps)
        np.testing.assert_array_equal(sampler.timesteps(steps), reference.timesteps.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_onnx_ddim_loop_reproduces_the_torch_pipeline(
    net: ConditionalDiffusionUNet, scheduler: DDPMScheduler, onnx_file: Path, guidance_scale: float
) -> None:
    from medgen.onnx_sampling import OnnxDDIMSampler

    labels, seeds = [0, 1, 2], [7, 8, 9]
    pipeline = DiffusionPipeline(net, scheduler, CLASSES, image_size=16, in_channels=1, precision="fp32")
    expected = pipeline.generate_batch(labels, seeds, num_inference_steps=20, guidance_scale=guidance_scale).numpy()
    sampler = OnnxDDIMSampler(onnx_file)
    assert sampler.classes == CLASSES and sampler.null_class == 2 and sampler.image_shape == IMAGE_SHAPE
    noise = pipeline.initial_noise(seeds).numpy()
    images = sampler.sample(labels, num_inference_steps=20, guidance_scale=guidance_scale, noise=noise)
    assert images.shape == (3, *IMAGE_SHAPE)
    # each step agrees to float32 rounding (next test); the chain amplifies those differences, to ~3e-4 here
    assert np.abs(images - expected).max() < 2e-3
    assert np.abs(expected).max() > 0.1  # the comparison is not between two blank images


@pytest.mark.slow
def test_onnx_ddim_step_is_monai_ddim_step(onnx_file: Path, scheduler: DDPMScheduler) -> None:
    from medgen.diffusion.pipeline import make_scheduler
    from medgen.onnx_sampling import OnnxDDIMSampler

    sampler = OnnxDDIMSampler(onnx_file)
    reference = make_scheduler("ddim", scheduler)
    reference.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    for t in reference.timesteps.tolist():
        x, model_output = torch.randn(2, *IMAGE_SHAPE, generator=gen), torch.randn(2, *IMAGE_SHAPE, generator=gen)
        expected, _ = reference.step(model_output, t, x)
        got = sampler.step(model_output.numpy(), t, x.numpy(), 20)
        assert np.abs(got - expected.numpy()).max() < 1e-5


@pytest.mark.slow
def test_onnx_sampling_from_seeds_is_reproducible(onnx_file: Path) -> None:
    from medgen.onnx_sampling import OnnxDDIMSampler

    sampler = OnnxDDIMSampler(onnx_file)
    first = sampler.sample([0, 1], seeds=[3, 4], num_inference_steps=5)
    again = sampler.sample([1], seeds=[4], num_inference_steps=5)
    np.testing.assert_array_equal(first[1:], again)
    assert np.all(np.abs(first) <= 1.0)
    with pytest.raises(ValueError, match="one seed per label"):
        sampler.sample([0, 1], seeds=[3], num_inference_steps=5)
