"""The NCSN noise levels and the denoising score matching objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medgen.diffusion.ncsn import NCSNScheduler, max_pairwise_distance, ncsnv2_num_levels
from medgen.diffusion.score_training import DenoisingScoreMatchingLoss, DSMPrepareBatch, ScoreMatchingInferer
from medgen.networks.score import ScoreNetwork


def test_levels_are_geometric_from_sigma_max_to_sigma_min():
    sched = NCSNScheduler(num_train_timesteps=10, sigma_max=50.0, sigma_min=0.01)
    s = sched.sigmas
    assert s[0] == pytest.approx(50.0) and s[-1] == pytest.approx(0.01)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)
    assert ratios[0] == pytest.approx((50 / 0.01) ** (1 / 9), rel=1e-4)


def test_add_noise_is_variance_exploding():
    sched = NCSNScheduler(5, sigma_max=4.0, sigma_min=0.25)
    x, eps = torch.ones(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    noisy = sched.add_noise(x, eps, torch.tensor([0, 4]))
    assert torch.allclose(noisy[0], x[0] + 4.0 * eps[0]) and torch.allclose(noisy[1], x[1] + 0.25 * eps[1])


def test_inference_levels_run_from_noisiest_to_cleanest_and_include_both_ends():
    sched = NCSNScheduler(100, 50.0, 0.01)
    sched.set_timesteps(7)
    t = sched.timesteps.tolist()
    assert t[0] == 0 and t[-1] == 99 and t == sorted(t) and len(set(t)) == 7
    assert sched.next_timestep(t[-2]) == 99 and sched.next_timestep(99) is None
    with pytest.raises(ValueError, match="between 1 and the number of noise levels 100"):
        sched.set_timesteps(101)


def test_bad_sigma_range_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        NCSNScheduler(10, sigma_max=0.01, sigma_min=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        NCSNScheduler(1)


def test_number_of_levels_follows_ncsnv2_technique_2():
    # NCSNv2 used L = 232 for CIFAR-10 (D = 3072, sigma 50 .. 0.01) and 500 for CelebA 64x64 (D = 12288, 90 .. 0.01)
    assert 200 <= ncsnv2_num_levels(3072, 50.0, 0.01) <= 260
    assert 450 <= ncsnv2_num_levels(12288, 90.0, 0.01) <= 550
    assert max_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])) == pytest.approx(5.0)


def test_predictor_step_lands_on_next_level_and_the_last_step_is_tweedie():
    sched = NCSNScheduler(3, sigma_max=2.0, sigma_min=0.5)
    sched.set_timesteps(3)
    x, score, z = torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2)
    nxt, x0 = sched.step(score, 0, x, noise=z)
    assert torch.allclose(nxt, x + (4.0 - 1.0) * score)  # sigma 2 -> 1
    assert torch.allclose(x0, x + 4.0 * score)
    last, x0_last = sched.step(score, 2, x, noise=z)
    assert torch.equal(last, x0_last) and torch.allclose(last, x + 0.25 * score)


def test_ode_step_is_dpm_solver_pp_in_sigma():
    sched = NCSNScheduler(3, sigma_max=4.0, sigma_min=1.0)  # levels 4, 2, 1
    sched.set_timesteps(3)
    x, score = torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), -0.5)
    first, x0 = sched.ode_step(score, 0, x)
    assert torch.allclose(x0, x + 16.0 * score)  # D = x + sigma^2 s = -5
    assert torch.allclose(first, 0.5 * x + 0.5 * x0)  # sigma 4 -> 2: (sigma'/sigma) x + (1 - sigma'/sigma) D
    # second order: r = log(4/2) / log(2/1) = 1, D~ = D + (D - D_prev) / 2
    second, x0_2 = sched.ode_step(score, 1, first, previous=(x0, 0))
    d_tilde = x0_2 + (x0_2 - x0) / 2.0
    assert torch.allclose(second, 0.5 * first + 0.5 * d_tilde)
    last, x0_last = sched.ode_step(score, 2, second, previous=(x0_2, 1))
    assert torch.equal(last, x0_last) and torch.allclose(last, second + score)  # the last level: Tweedie


class Linear(nn.Module):
    """F(x, c_noise) = a x: a UNet stand-in with a score we can write down; records what it was given."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.seen_timesteps = None

    def forward(self, x, timesteps, class_labels=None):
        self.seen_timesteps = timesteps
        return self.a * x


def test_dsm_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    sched = NCSNScheduler(4, sigma_max=8.0, sigma_min=1.0)  # sigmas 8, 4, 2, 1
    unet = Linear(-0.5)
    net = ScoreNetwork(unet, sigma_data=0.0)
    images = torch.tensor([[[[0.5, -1.0], [0.25, 1.0]]], [[[-0.5, 0.0], [1.0, -0.75]]]])
    prepare = DSMPrepareBatch(sched, null_class=2, label_dropout=0.0)
    inputs, target, args, kwargs = prepare({"image": images, "label": torch.tensor([0, 1])})
    pred = ScoreMatchingInferer(sched, precision="fp32")(inputs, net, *args, **kwargs)
    loss_sum = DenoisingScoreMatchingLoss("sum")(pred, target)
    loss_mean = DenoisingScoreMatchingLoss("mean")(pred, target)

    # by hand: loss = 1/N sum_n sigma_n^2 sum_d (s_nd + eps_nd / sigma_n)^2, s = F / sigma = a (x + sigma eps) / sigma
    eps, levels = kwargs["noise"], kwargs["timesteps"]
    total = 0.0
    for n in range(2):
        sigma = [8.0, 4.0, 2.0, 1.0][int(levels[n])]
        for d in range(4):
            x, e = images[n].flatten()[d].item(), eps[n].flatten()[d].item()
            score = -0.5 * (x + sigma * e) / sigma
            total += sigma**2 * (score + e / sigma) ** 2
    assert loss_sum.item() == pytest.approx(total / 2, rel=1e-5)
    assert loss_mean.item() == pytest.approx(total / 2 / 4, rel=1e-5)
    assert torch.equal(target, -eps)
    # the noise level reaches the network as log sigma, through the timestep embedding argument
    expected = torch.log(torch.tensor([[8.0, 4.0, 2.0, 1.0][int(i)] for i in levels]))
    assert torch.allclose(unet.seen_timesteps, expected)


def test_score_network_divides_by_sigma_and_scales_its_input():
    x = torch.ones(2, 1, 2, 2)
    sigma = torch.tensor([2.0, 0.1])
    c_in = (1 / torch.sqrt(sigma**2 + 0.25)).view(-1, 1, 1, 1)
    net = ScoreNetwork(Linear(1.0), sigma_data=0.5, skip=False)
    out = net(x, sigma)
    assert torch.allclose(out, x * c_in / sigma.view(-1, 1, 1, 1))
    # with the skip connection a UNet that outputs 0 gives the score of N(0, sigma_data^2 + sigma^2)
    prior = ScoreNetwork(Linear(0.0), sigma_data=0.5, skip=True)
    assert torch.allclose(prior(x, sigma), -x / (sigma**2 + 0.25).view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        net(x, torch.tensor([1.0, 0.0]))


def test_label_dropout_sends_labels_to_the_null_class():
    torch.manual_seed(0)
    prepare = DSMPrepareBatch(NCSNScheduler(10), null_class=2, label_dropout=0.5)
    _, _, _, kwargs = prepare({"image": torch.zeros(400, 1, 2, 2), "label": torch.ones(400, dtype=torch.long)})
    share = (kwargs["class_labels"] == 2).float().mean().item()
    assert set(kwargs["class_labels"].tolist()) == {1, 2} and math.isclose(share, 0.5, abs_tol=0.1)
    assert kwargs["timesteps"].min() >= 0 and kwargs["timesteps"].max() <= 9


def test_lognormal_sampling_draws_the_levels_nearest_to_edm_noise_levels():
    sched = NCSNScheduler(266, sigma_max=75.0, sigma_min=0.01)
    torch.manual_seed(0)
    prepare = DSMPrepareBatch(sched, null_class=2, timestep_sampling="lognormal")
    _, _, _, kwargs = prepare({"image": torch.zeros(4000, 1, 2, 2), "label": torch.ones(4000, dtype=torch.long)})
    log_sigma = torch.log(sched.sigma(kwargs["timesteps"]))
    assert math.isclose(log_sigma.mean().item(), -1.2, abs_tol=0.08)
    assert math.isclose(log_sigma.std().item(), 1.2, abs_tol=0.08)
    # the uniform (NCSN) draw spreads over every level instead: log sigma from log 0.01 to log 75
    uniform = DSMPrepareBatch(sched, null_class=2)({"image": torch.zeros(4000, 1, 2, 2),
                                                   "label": torch.ones(4000, dtype=torch.long)})[3]["timesteps"]
    assert math.isclose(torch.log(sched.sigma(uniform)).mean().item(), (math.log(75) + math.log(0.01)) / 2, abs_tol=0.2)
    assert sched.nearest_level(torch.tensor([math.log(75.0), math.log(0.01), 10.0, -10.0])).tolist() == [0, 265, 0, 265]
    with pytest.raises(ValueError, match="timestep_sampling"):
        DSMPrepareBatch(sched, timestep_sampling="cosine")
