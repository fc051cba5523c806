"""DPM-Solver++ against closed forms: on Gaussian data the exact ε / v / x0 predictions are known, and so is the
probability-flow ODE's end point, so the solver's error can be measured without a trained network."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen.diffusion.pipeline import make_scheduler
from medgen.diffusion.solvers import SOLVERS, DPMSolverMultistepScheduler

MU, STD = 0.3, 0.5  # the data distribution N(MU, STD^2), per pixel


def exact_output(scheduler, x: torch.Tensor, t: int, prediction_type: str) -> torch.Tensor:
    """The Bayes-optimal network output for Gaussian data: E[eps | x_t], E[x0 | x_t] or E[v | x_t]."""
    acp = float(scheduler.alphas_cumprod[t])
    alpha, sigma = acp**0.5, (1 - acp) ** 0.5
    var = alpha**2 * STD**2 + sigma**2
    eps = sigma * (x - alpha * MU) / var
    x0 = MU + alpha * STD**2 * (x - alpha * MU) / var
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[prediction_type]


def ode_end_point(scheduler, x_start: torch.Tensor, t_start: int) -> torch.Tensor:
    """Where the probability-flow ODE takes ``x_start`` at ``t_start``: it maps N(a MU, a²S²+s²) onto N(MU, S²)."""
    acp = float(scheduler.alphas_cumprod[t_start])
    alpha, sigma = acp**0.5, (1 - acp) ** 0.5
    return MU + STD * (x_start - alpha * MU) / (alpha**2 * STD**2 + sigma**2) ** 0.5


def solve(scheduler, steps: int, prediction_type: str, x: torch.Tensor) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x, _ = scheduler.step(exact_output(scheduler, x, int(t), prediction_type), t, x)
    return x


def solver(order: int, prediction_type: str = "epsilon") -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(prediction_type=prediction_type, solver_order=order, clip_sample=False)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_dpmpp2m_reaches_the_ode_solution_in_20_steps(prediction_type: str) -> None:
    x_start = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sched = solver(2, prediction_type)
    sched.set_timesteps(20)
    target = ode_end_point(sched, x_start, int(sched.timesteps[0]))
    out = solve(sched, 20, prediction_type, x_start)
    assert (out - target).abs().max() < 0.04


def test_second_order_beats_first_order_at_equal_steps() -> None:
    x_start = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    errors = {}
    for order in (1, 2):
        sched = solver(order)
        sched.set_timesteps(10)
        target = ode_end_point(sched, x_start, int(sched.timesteps[0]))
        errors[order] = float((solve(sched, 10, "epsilon", x_start) - target).abs().max())
    assert errors[2] < errors[1] / 3


def test_epsilon_and_v_prediction_give_the_same_images() -> None:
    x_start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    a = solve(solver(2, "epsilon"), 15, "epsilon", x_start)
    b = solve(solver(2, "v_prediction"), 15, "v_prediction", x_start)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_first_order_step_is_ddim() -> None:
    sched = solver(1)
    sched.set_timesteps(10)
    t, t_next = int(sched.timesteps[3]), int(sched.timesteps[4])
    sched.step_index = 3
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    out, x0 = sched.step(eps, t, x)
    a, a_next = sched.alphas_cumprod[t], sched.alphas_cumprod[t_next]
    ddim_x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    ddim = a_next.sqrt() * ddim_x0 + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(x0, ddim_x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ddim, atol=1e-5, rtol=1e-5)


def test_timesteps_are_distinct_from_the_top_to_zero_and_the_last_step_returns_x0() -> None:
    sched = solver(2)
    sched.set_timesteps(20)
    assert len(sched.timesteps) == 20 and int(sched.timesteps[0]) == 999 and int(sched.timesteps[-1]) == 0
    assert torch.all(sched.timesteps[:-1] > sched.timesteps[1:])
    x = torch.randn(1, 1, 4, 4)
    for t in sched.timesteps:
        x_prev, x0 = sched.step(torch.zeros_like(x), t, x)
        x = x_prev
    torch.testing.assert_close(x_prev, x0)


def test_steps_out_of_order_are_refused() -> None:
    sched = solver(2)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="expected step 0"):
        sched.step(torch.zeros(1, 1, 2, 2), int(sched.timesteps[3]), torch.zeros(1, 1, 2, 2))


def test_registered_solvers_share_the_training_schedule_and_prediction_type() -> None:
    train = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", prediction_type="v_prediction")
    assert "dpmpp2m" in SOLVERS
    sched = make_scheduler("dpmpp2m", train)
    assert isinstance(sched, DPMSolverMultistepScheduler) and sched.solver_order == 2
    assert sched.prediction_type == "v_prediction"
    torch.testing.assert_close(sched.alphas_cumprod, train.alphas_cumprod)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("nonesuch", train)


@pytest.mark.parametrize("steps", [1, 5, 50, 200, 1000])
def test_any_step_count_gives_distinct_decreasing_timesteps(steps: int) -> None:
    sched = solver(2)
    sched.set_timesteps(steps)
    t = sched.timesteps
    assert len(t) == steps and int(t[0]) == 999 and int(t[-1]) >= 0
    assert torch.all(t[:-1] > t[1:])


def _out_of_range_network(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, deterministic ε-'network' whose x0 estimates fall far outside [-1, 1] (so clipping acts)."""
    return 0.6 * x + 0.8 * torch.sin(3.0 * x + t / 100.0)


def test_first_order_with_clipping_is_monai_ddim_on_its_timesteps() -> None:
    """With clip_sample, order 1 keeps the network's noise beside the clipped x0, exactly as MONAI's DDIMScheduler."""
    from monai.networks.schedulers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    ddim.set_timesteps(25)
    # a grid on which MONAI's step (which goes to t - T // N) lands on the next timestep: 960, 920, ..., 0
    ddim.timesteps = torch.arange(960, -1, -40)
    ours = DPMSolverMultistepScheduler(solver_order=1, clip_sample=True)
    ours.set_timesteps(25)
    ours.timesteps = ddim.timesteps.clone()
    x_ddim = x_ours = 3.0 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    clipped = 0
    for t in ddim.timesteps:
        eps = _out_of_range_network(x_ddim, int(t))
        acp = ddim.alphas_cumprod[int(t)]
        clipped += int(((x_ddim - (1 - acp).sqrt() * eps) / acp.sqrt()).abs().gt(1).any())
        x_ddim, _ = ddim.step(eps, int(t), x_ddim)
        x_ours, _ = ours.step(_out_of_range_network(x_ours, int(t)), int(t), x_ours)
    assert clipped >= 10, "the test network must push x0 out of range for clipping to be tested"
    torch.testing.assert_close(x_ours, x_ddim, atol=1e-4, rtol=1e-4)


def test_epsilon_and_v_prediction_agree_when_clipping_acts() -> None:
    eps_solver = DPMSolverMultistepScheduler(prediction_type="epsilon", clip_sample=True)
    v_solver = DPMSolverMultistepScheduler(prediction_type="v_prediction", clip_sample=True)
    x_e = x_v = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    eps_solver.set_timesteps(12)
    v_solver.set_timesteps(12)
    for t in eps_solver.timesteps:
        t = int(t)
        eps = _out_of_range_network(x_e, t)
        x_e, _ = eps_solver.step(eps, t, x_e)
        alpha, sigma = v_solver.alpha_sigma(t)
        eps_v = _out_of_range_network(x_v, t)
        x0 = (x_v - sigma * eps_v) / alpha
        x_v, _ = v_solver.step(alpha * eps_v - sigma * x0, t, x_v)
    torch.testing.assert_close(x_e, x_v, atol=1e-3, rtol=1e-3)
    assert x_e.abs().max() <= 1.0
