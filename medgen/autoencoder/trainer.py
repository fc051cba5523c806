"""The VAE-GAN training engine for the autoencoder stage.

Adapted from ``VaeGanTrainer`` in ``models/brats_mri_generative_diffusion/scripts/ldm_trainer.py`` of the MONAI
Model Zoo (github.com/Project-MONAI/model-zoo, Copyright (c) MONAI Consortium, Apache License 2.0). Changes: the
generator step comes first and the discriminator trains on its detached reconstruction (the order of MONAI's
AutoencoderKL tutorials), the adversarial terms start only after ``adv_warmup_iters`` iterations (counted over the
whole run, so a resumed run keeps its place), the discriminator is optional (no discriminator: a plain VAE), and
``engine.state.output`` carries ``loss`` (the generator's objective) as medgen's handlers (``LossHistory``,
``LossProgressBar``, ``StatsHandler`` with ``from_engine(['loss'])``) read it, beside each term as a float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines.trainer import Trainer
from monai.engines.utils import default_prepare_batch
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from medgen.diffusion.precision import autocast, resolve_dtype


class VaeGanTrainer(Trainer):
    """Train an ``AutoencoderKL`` (generator) against a ``PatchDiscriminator``, one batch per iteration:

    1. reconstruct the batch (``g_network(images)`` -> reconstruction, z_mu, z_sigma);
    2. generator step on ``g_loss_function(reconstruction, images, z_mu, z_sigma, logits_fake)``
       (:class:`~medgen.autoencoder.losses.GeneratorLoss`; ``logits_fake`` is None during the warm-up);
    3. after the warm-up, ``d_train_steps`` discriminator steps on
       ``d_loss_function(logits of the detached reconstruction, logits of the images)``
       (:class:`~medgen.autoencoder.losses.DiscriminatorLoss`).

    Args:
        device: where training runs.
        max_epochs: epochs to train (a resumed run continues up to it).
        train_data_loader: a ``DataLoader`` of ``{"image": (B, C, H, W) in [-1, 1], "label": ...}`` batches.
        g_network, g_optimizer, g_loss_function: the autoencoder, its optimizer and objective.
        d_network, d_optimizer, d_loss_function: the discriminator, its optimizer and objective; all None for a
            VAE without adversarial loss.
        adv_warmup_iters: iterations of reconstruction (+ KL, perceptual) only, before the adversarial terms start.
        d_train_steps: discriminator steps per iteration after the warm-up.
        epoch_length: iterations per epoch (default: the loader's length).
        prepare_batch: batch -> (images, labels); MONAI's default reads ``image`` and ``label``.
        train_handlers: ignite/MONAI handlers (checkpoints, resume, EMA, time limit, loss history, grids ...).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        precision: ``auto`` (bf16 autocast where the CPU/GPU runs it fast, as the diffusion trainers), ``bf16``,
            ``fp16`` or ``fp32``. The networks' forward passes and the perceptual / adversarial terms run under
            autocast; the reconstruction and posterior are cast back to fp32 before the L1 and KL terms.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        g_network: torch.nn.Module,
        g_optimizer: Optimizer,
        g_loss_function: Callable[..., dict[str, torch.Tensor]],
        d_network: torch.nn.Module | None = None,
        d_optimizer: Optimizer | None = None,
        d_loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        adv_warmup_iters: int = 0,
        d_train_steps: int = 1,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        optim_set_to_none: bool = True,
        to_kwargs: dict | None = None,
        precision: str = "fp32",
    ) -> None:
        if not isinstance(train_data_loader, DataLoader):
            raise ValueError("train_data_loader must be a PyTorch DataLoader")
        given = [x is not None for x in (d_network, d_optimizer, d_loss_function)]
        if any(given) and not all(given):
            raise ValueError("the adversarial loss needs d_network, d_optimizer and d_loss_function together "
                             "(or none of them for a VAE without one)")
        if adv_warmup_iters < 0 or d_train_steps < 1:
            raise ValueError(f"adv_warmup_iters must be >= 0 and d_train_steps >= 1, got {adv_warmup_iters} and "
                             f"{d_train_steps}")
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=train_data_loader, epoch_length=epoch_length,
            non_blocking=non_blocking, prepare_batch=prepare_batch, handlers=train_handlers, decollate=False,
            to_kwargs=to_kwargs,
        )
        self.g_network = g_network
        self.g_optimizer = g_optimizer
        self.g_loss_function = g_loss_function
        self.d_network = d_network
        self.d_optimizer = d_optimizer
        self.d_loss_function = d_loss_function
        self.adv_warmup_iters = int(adv_warmup_iters)
        self.d_train_steps = int(d_train_steps)
        self.optim_set_to_none = optim_set_to_none
        self.precision = precision
        self.compute_dtype = resolve_dtype(device, precision)

    def adversarial_at(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based, over the whole run) trains with the adversarial terms."""
        return self.d_network is not None and iteration > self.adv_warmup_iters

    def _iteration(self, engine: VaeGanTrainer, batchdata: dict | Sequence) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        adversarial = engine.adversarial_at(engine.state.iteration)

        # generator (autoencoder) step
        engine.g_network.train()
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast(engine.state.device, engine.compute_dtype):
            reconstruction, z_mu, z_sigma = (t.float() for t in engine.g_network(images))
            logits_fake = None
            if adversarial:
                engine.d_network.train()
                logits_fake = engine.d_network(reconstruction.contiguous())[-1].float()
            terms = engine.g_loss_function(reconstruction, images, z_mu, z_sigma, logits_fake)
        terms["loss"].backward()
        engine.g_optimizer.step()

        # discriminator step(s), after the warm-up
        d_loss = 0.0
        if adversarial:
            fake, real = reconstruction.detach().contiguous().float(), images.contiguous().float()
            for _ in range(engine.d_train_steps):
                engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
                with autocast(engine.state.device, engine.compute_dtype):
                    logits = engine.d_network(fake)[-1].float(), engine.d_network(real)[-1].float()
                    loss_d = engine.d_loss_function(*logits)
                loss_d.backward()
                engine.d_optimizer.step()
                d_loss += float(loss_d.detach()) / engine.d_train_steps

        out = {key: float(value.detach()) for key, value in terms.items()}
        out.update(g_loss=out["loss"], d_loss=d_loss, adversarial=adversarial)
        return out
