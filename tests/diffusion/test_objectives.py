"""Training objectives: Min-SNR-gamma weights, log-normal noise levels, EDM preconditioning, learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen.diffusion import ConditionalDiffusionInferer, ConditionalDiffusionPrepareBatch, objectives
from medgen.diffusion.pipeline import DiffusionPipeline


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02,
                         prediction_type=prediction_type)


def test_min_snr_weights_follow_the_paper():
    s = scheduler()
    t = torch.tensor([0, 100, 500, 999])
    snr = objectives.snr(s, t)
    gamma = 5.0
    eps = objectives.min_snr_weight(snr, gamma, "epsilon")
    v = objectives.min_snr_weight(snr, gamma, "v_prediction")
    x0 = objectives.min_snr_weight(snr, gamma, "sample")
    assert torch.allclose(eps, torch.minimum(snr, torch.tensor(gamma)) / snr)
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(gamma)) / (snr + 1))
    assert torch.allclose(x0, torch.minimum(snr, torch.tensor(gamma)))
    # low noise (high SNR) is down-weighted for epsilon; high noise keeps weight 1
    assert eps[0] < 0.01 and eps[-1] == pytest.approx(1.0)


def test_lognormal_timesteps_have_the_asked_median_noise_level():
    s = scheduler()
    torch.manual_seed(0)
    t = objectives.lognormal_timesteps(s, 20_000, mean=-1.2, std=1.2)
    abar = s.alphas_cumprod[t]
    log_sigma = 0.5 * torch.log((1 - abar) / abar)
    assert log_sigma.median().item() == pytest.approx(-1.2, abs=0.05)
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.long
    uniform_median = 0.5 * torch.log((1 - s.alphas_cumprod[500]) / s.alphas_cumprod[500])
    assert uniform_median > 0.5  # the uniform draw's median noise level is far higher: the distributions differ


def test_edm_target_and_epsilon_round_trip():
    s = scheduler()
    edm = objectives.EDMPreconditioning(s, sigma_data=0.5)
    torch.manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    x_t = s.add_noise(x0, noise, t)
    target = edm.target(x0, noise, t)
    # a network that outputs exactly the target is a perfect denoiser: the epsilon it implies is the true noise
    assert torch.allclose(edm.to_epsilon(target, x_t, t), noise, atol=1e-3)
    # and its input c_in * x_hat has about unit variance at every noise level (EDM's point)
    x_in = x_t * edm.input_scale(t, x_t.ndim)
    assert x_in[-1].std().item() == pytest.approx(1.0, abs=0.3)


def test_prepare_batch_and_inferer_compute_the_weighted_loss():
    s = scheduler()
    prep = ConditionalDiffusionPrepareBatch(1000, scheduler=s, null_class=2, label_dropout=0.0,
                                            loss_weighting="min_snr", min_snr_gamma=5.0)
    inferer = ConditionalDiffusionInferer(s, precision="fp32")
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    class Net(torch.nn.Module):
        def forward(self, x, timesteps, context=None, class_labels=None):
            return net(x)

    torch.manual_seed(1)
    batch = {"image": torch.rand(4, 1, 8, 8), "label": torch.tensor([0, 1, 0, 1])}
    images, target, args, kwargs = prep(batch, "cpu")
    pred = inferer(images, Net(), *args, **kwargs)
    loss = torch.nn.functional.mse_loss(pred, target)
    # the same loss written out: mean over samples of w(t) * ||net(x_t) - eps||^2
    t = kwargs["timesteps"]
    w = objectives.min_snr_weight(objectives.snr(s, t), 5.0, "epsilon")
    x_t = s.add_noise(images, kwargs["noise"], t)
    manual = (w.view(-1, 1, 1, 1) * (net(x_t) - kwargs["noise"]) ** 2).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_edm_network_samples_through_every_sampler():
    s = scheduler()
    inner = torch.nn.Conv2d(1, 1, 1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x, timesteps, context=None, class_labels=None):
            return self.inner(x)

    wrapped = objectives.for_sampling(Net(), s, "edm", 0.5)
    assert isinstance(wrapped, objectives.PreconditionedNetwork)
    assert objectives.for_sampling(inner, s, "none") is inner
    pipe = DiffusionPipeline(wrapped, s, ["a", "b"], 8, precision="fp32")
    for sampler, steps in (("ddim", 5), ("dpmpp2m", 5)):
        out = pipe.generate([0, 1], [1, 2], steps, guidance_scale=1.5, sampler=sampler)
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert isinstance(DDIMScheduler(), DDIMScheduler)


@pytest.mark.parametrize("kw, message", [
    ({"preconditioning": "edm", "prediction_type": "v_prediction"}, "prediction_type epsilon"),
    ({"preconditioning": "edm", "loss_weighting": "min_snr"}, "own loss weighting"),
    ({"loss_weighting": "snr"}, "loss_weighting must be one of"),
    ({"timestep_sampling": "cosine"}, "timestep_sampling must be one of"),
])
def test_impossible_objectives_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        ConditionalDiffusionPrepareBatch(1000, scheduler=scheduler(kw.pop("prediction_type", "epsilon")), **kw)


def test_learning_rate_schedule_warms_up_then_decays_to_the_final_factor():
    f = objectives.warmup_cosine_factor
    assert f(0, warmup=10, total=100) == pytest.approx(0.1)
    assert f(9, warmup=10, total=100) == pytest.approx(1.0)
    assert f(10, warmup=10, total=100) == pytest.approx(1.0)
    assert f(55, warmup=10, total=100, final_factor=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert f(100, warmup=10, total=100, final_factor=0.1) == pytest.approx(0.1)
    assert f(500, warmup=0, total=100, schedule="constant") == 1.0
