import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen.diffusion import ConditionalDiffusionInferer, ConditionalDiffusionPrepareBatch


def batch(n=64):
    return {"image": torch.rand(n, 1, 8, 8) * 2 - 1, "label": torch.randint(0, 2, (n,))}


def test_labels_reach_the_inferer_with_dropout_to_the_null_class():
    torch.manual_seed(0)
    prep = ConditionalDiffusionPrepareBatch(1000, DDPMScheduler(1000), null_class=2, label_dropout=0.25)
    data = batch(4000)
    images, target, args, kwargs = prep(data)
    labels = kwargs["class_labels"]
    assert torch.equal(target, kwargs["noise"]) and images.shape == target.shape
    dropped = labels == 2
    assert 0.2 < dropped.float().mean() < 0.3
    assert torch.equal(labels[~dropped], data["label"][~dropped])
    assert kwargs["timesteps"].min() >= 0 and kwargs["timesteps"].max() < 1000


def test_v_prediction_target_matches_the_scheduler():
    sched = DDPMScheduler(1000, prediction_type="v_prediction")
    prep = ConditionalDiffusionPrepareBatch(1000, sched, null_class=2, label_dropout=0.0)
    data = batch(8)
    images, target, _, kwargs = prep(data)
    assert torch.allclose(target, sched.get_velocity(images, kwargs["noise"], kwargs["timesteps"]))
    with pytest.raises(ValueError, match="v_prediction"):
        ConditionalDiffusionPrepareBatch(1000, None, prediction_type="v_prediction")


def test_inferer_passes_class_labels_and_returns_fp32():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, timesteps, context=None, class_labels=None):
            seen["labels"] = class_labels
            seen["dtype"] = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            return x * 1.0

    sched = DDPMScheduler(1000)
    inferer = ConditionalDiffusionInferer(sched, precision="bf16")
    x, noise = torch.zeros(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([999, 999])
    out = inferer(x, Probe(), noise, t, class_labels=torch.tensor([1, 0]))
    assert torch.equal(seen["labels"], torch.tensor([1, 0])) and seen["dtype"] == torch.bfloat16
    assert out.dtype == torch.float32
    assert torch.allclose(out, sched.add_noise(x, noise, t))
