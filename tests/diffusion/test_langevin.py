"""Annealed Langevin sampling on scores we know in closed form: data N(mu, s^2) has score -(x - mu)/(s^2 + sigma^2)
at noise level sigma, so the sampler must return images with mean mu and standard deviation s."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medgen.diffusion.langevin import LangevinPipeline
from medgen.diffusion.ncsn import NCSNScheduler

MU, S = 0.1, 0.2


class GaussianScore(nn.Module):
    """Exact score of N(mu_c, s^2) smoothed by sigma; class c has mean ``means[c]``, the null class ``null_mean``."""

    def __init__(self, means=(MU, MU), null_mean=MU, std=S) -> None:
        super().__init__()
        self.means = torch.tensor([*means, null_mean])
        self.std = std

    def forward(self, x, sigma, class_labels=None):
        mu = self.means[class_labels].view(-1, 1, 1, 1) if class_labels is not None else self.means[-1]
        return -(x - mu) / (self.std**2 + sigma.view(-1, 1, 1, 1) ** 2)


def pipeline(sampler: str, levels: int = 200, image_size: int = 32, **kwargs) -> LangevinPipeline:
    # 32x32: the SNR step size depends on the image's own norm, which biases the variance by O(1 / pixels)
    sched = NCSNScheduler(levels, sigma_max=10.0, sigma_min=0.01)
    return LangevinPipeline(
        GaussianScore(kwargs.pop("means", (MU, MU))),
        sched,
        ["a", "b"],
        image_size=image_size,
        precision="fp32",
        batch_size=32,
        sampler=sampler,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("sampler", "levels", "settings"),
    [
        ("pc", 200, {"n_steps_each": 1, "snr": 0.16}),  # predictor-corrector, SNR step size
        ("reverse", 200, {"n_steps_each": 0}),  # predictor only
        ("als", 50, {"n_steps_each": 10, "snr": None, "step_lr": 5e-5}),  # NCSN: alpha_i = eps sigma_i^2/sigma_L^2
    ],
)
def test_sampler_converges_to_the_gaussian_mean_and_variance(sampler, levels, settings):
    images = pipeline(sampler, levels, **settings).generate([0] * 32, list(range(32)), levels)
    assert images.shape == (32, 1, 32, 32)
    assert images.mean().item() == pytest.approx(MU, abs=0.005)  # 32768 values: standard error 0.001
    assert images.std().item() == pytest.approx(S, rel=0.03)


def test_ode_sampler_reaches_the_gaussian_in_twenty_network_evaluations():
    # the probability-flow ODE maps N(0, sigma_max^2) onto N(mu, s^2) deterministically: 20 of the 200 levels suffice
    pipe = pipeline("dpmpp2m", 200)
    calls = []
    pipe.network.register_forward_hook(lambda *_: calls.append(1))
    images = pipe.generate([0] * 32, list(range(32)), 20)
    assert len(calls) == 20  # 19 solver steps and the final denoising
    assert images.mean().item() == pytest.approx(MU, abs=0.005)
    assert images.std().item() == pytest.approx(S, rel=0.03)
    again = pipeline("dpmpp2m", 200).generate([0] * 4, [3, 1, 0, 2], 20)
    assert torch.equal(again, images[[3, 1, 0, 2]])  # no noise is drawn after the start: the seed decides


@pytest.mark.parametrize(
    ("sampler", "n_steps_each"), [("pc", 1), ("pc", 3), ("als", 2), ("reverse", 0), ("dpmpp2m", 1)]
)
def test_network_passes_counts_what_the_sampler_runs(sampler, n_steps_each):
    # the service estimates a job's time from this count: a pc job runs the network about twice per level
    pipe = pipeline(sampler, 30, image_size=8, n_steps_each=n_steps_each)
    calls = []
    pipe.network.register_forward_hook(lambda *_: calls.append(1))
    pipe.generate([0, 1], [0, 1], 12)
    assert len(calls) == pipe.network_passes(12)
    assert pipe.network_passes(12, "pc") == 12 * n_steps_each + 11 + 1


def test_each_image_depends_on_its_seed_not_on_its_batch():
    seeds = [5, 6, 7, 8]
    one_batch = pipeline("pc", 20, image_size=8).generate([0, 1, 0, 1], seeds, 20)
    small = pipeline("pc", 20, image_size=8)
    small.batch_size = 1
    alone = small.generate([0, 1, 0, 1], seeds, 20)
    assert torch.allclose(one_batch, alone, atol=1e-6)
    assert not torch.allclose(one_batch[0], one_batch[2])


def test_classifier_free_guidance_moves_samples_along_class_minus_unconditional():
    # scores s_c of N(0.3, s^2) and s_null of N(0, s^2): s_null + w (s_c - s_null) is the score of N(w * 0.3, s^2)
    sched = NCSNScheduler(100, sigma_max=10.0, sigma_min=0.01)
    pipe = LangevinPipeline(
        GaussianScore(means=(0.3, -0.3), null_mean=0.0),
        sched,
        ["a", "b"],
        image_size=8,
        precision="fp32",
        batch_size=64,
    )
    plain = pipe.generate([0] * 64, list(range(64)), 100)
    guided = pipe.generate([0] * 64, list(range(64)), 100, guidance_scale=2.0)
    other = pipe.generate([1] * 64, list(range(64)), 100, guidance_scale=2.0)
    assert plain.mean().item() == pytest.approx(0.3, abs=0.02)
    assert guided.mean().item() == pytest.approx(0.6, abs=0.02)
    assert other.mean().item() == pytest.approx(-0.6, abs=0.02)


def test_autoguidance_moves_samples_away_from_the_guide_s_class_score():
    # model s_c of N(0.3, s^2), guide of N(0.1, s^2) for the same class: s_g + w (s_c - s_g) is the score of
    # N(0.1 + w * 0.2, s^2); the model's own unconditional score (N(0, s^2)) is never asked
    sched = NCSNScheduler(100, sigma_max=10.0, sigma_min=0.01)
    guide = GaussianScore(means=(0.1, -0.1), null_mean=5.0)
    guide.weights_file = "guide.pt"
    pipe = LangevinPipeline(GaussianScore(means=(0.3, -0.3), null_mean=0.0), sched, ["a", "b"], image_size=8,
                            precision="fp32", batch_size=64, guide_network=guide)
    assert pipe.guide_network.weights_file == "guide.pt"  # what SampleRunner records beside each image
    plain = pipe.generate([0] * 64, list(range(64)), 100)
    guided = pipe.generate([0] * 64, list(range(64)), 100, guidance_scale=2.0)
    other = pipe.generate([1] * 64, list(range(64)), 100, guidance_scale=2.0)
    assert plain.mean().item() == pytest.approx(0.3, abs=0.02)  # w = 1: the model alone
    assert guided.mean().item() == pytest.approx(0.5, abs=0.02)
    assert other.mean().item() == pytest.approx(-0.5, abs=0.02)


def test_final_denoising_removes_the_last_noise_level():
    sched = NCSNScheduler(30, sigma_max=10.0, sigma_min=0.3)  # a large sigma_min makes the difference visible
    net = GaussianScore()
    kw = {"image_size": 8, "precision": "fp32", "batch_size": 128, "sampler": "reverse"}
    noisy = LangevinPipeline(net, sched, ["a", "b"], denoise=False, **kw).generate([0] * 128, list(range(128)), 30)
    clean = LangevinPipeline(net, sched, ["a", "b"], denoise=True, **kw).generate([0] * 128, list(range(128)), 30)
    # without it the samples are about N(mu, s^2 + sigma_min^2), wider than the data; Tweedie's
    # mu + (x - mu) s^2 / (s^2 + sigma_min^2) shrinks them towards mu
    assert noisy.std().item() > 1.5 * S
    assert clean.std().item() < 0.5 * noisy.std().item()
    assert clean.mean().item() == pytest.approx(MU, abs=0.01)


def test_unknown_sampler_and_scheduler_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        pipeline("ddim")
    with pytest.raises(TypeError, match="NCSNScheduler"):
        LangevinPipeline(GaussianScore(), object(), ["a", "b"])
