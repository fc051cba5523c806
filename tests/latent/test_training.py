"""medgen's training glue trains on the latent dataset unchanged: MONAI's SupervisedTrainer with
ConditionalDiffusionPrepareBatch (epsilon and v_prediction) and with denoising score matching."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from latent_helpers import tiny_unet
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import from_engine
from monai.networks.schedulers import DDPMScheduler

from medgen.diffusion import ConditionalDiffusionInferer, ConditionalDiffusionPrepareBatch
from medgen.diffusion.ncsn import NCSNScheduler, max_pairwise_distance
from medgen.diffusion.score_training import DenoisingScoreMatchingLoss, DSMPrepareBatch, ScoreMatchingInferer
from medgen.networks.score import ScoreNetwork


def run_trainer(network, loader, prepare_batch, inferer, loss) -> tuple[list[float], list[tuple]]:
    seen: list[tuple] = []
    network.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(tuple((args or (kwargs["x"],))[0].shape)),
                                      with_kwargs=True)
    losses: list[float] = []
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=network,
                                optimizer=torch.optim.AdamW(network.parameters(), lr=1e-3), loss_function=loss,
                                inferer=inferer, prepare_batch=prepare_batch, amp=False)
    loss_of = from_engine(["loss"], first=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(loss_of(e.state.output))))
    trainer.run()
    return losses, seen


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_conditional_diffusion_trains_on_scaled_latents(cxr: dict, prediction_type: str) -> None:
    cache = cxr["cache"]
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    network = tiny_unet(in_channels=cache.latent_shape[0])
    before = [p.detach().clone() for p in network.parameters()]
    loader = DataLoader(cache.dataset(), batch_size=3, shuffle=True)
    prepare = ConditionalDiffusionPrepareBatch(num_train_timesteps=1000, scheduler=scheduler, null_class=2)
    losses, seen = run_trainer(network, loader, prepare, ConditionalDiffusionInferer(scheduler, precision="fp32"),
                               torch.nn.MSELoss())
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert set(seen) == {(3, *cache.latent_shape)}  # the network saw latents, not images
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_denoising_score_matching_trains_on_scaled_latents(cxr: dict) -> None:
    cache = cxr["cache"]
    sigma_max = max_pairwise_distance(cache.scaled_means())  # NCSNv2's rule, in scaled-latent units
    scheduler = NCSNScheduler(10, sigma_max=sigma_max, sigma_min=0.01)
    network = ScoreNetwork(tiny_unet(in_channels=cache.latent_shape[0]), sigma_data=1.0)
    loader = DataLoader(cache.dataset(), batch_size=3, shuffle=True)
    losses, seen = run_trainer(network, loader, DSMPrepareBatch(scheduler, null_class=2),
                               ScoreMatchingInferer(scheduler, precision="fp32"), DenoisingScoreMatchingLoss())
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert sigma_max > 1.0
