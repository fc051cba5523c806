"""A handler that shows what the autoencoder makes of fixed images: originals above their reconstructions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from medgen.data.image_io import save_class_grid
from medgen.engine.handlers import EpochGridHandler

logger = logging.getLogger(__name__)


def pick_images(images: Any, count: int) -> torch.Tensor:
    """``count`` images spread evenly over ``images`` (a dataset of ``{"image": ...}`` items, a sequence of
    ``(C, H, W)`` tensors or a ``(N, C, H, W)`` tensor), stacked as ``(count, C, H, W)`` floats."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to reconstruct for the grid")
    index = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n)).round()})
    picked = [images[i] for i in index]
    picked = [item["image"] if isinstance(item, dict) else item for item in picked]
    return torch.stack([torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in picked])


@torch.no_grad()
def reconstruct(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Deterministic reconstructions (decoder of the posterior mean, ``AutoencoderKL.reconstruct``) of images in
    [-1, 1], on the network's device, clamped to [-1, 1]; the network's train/eval mode is left as it was."""
    device = next(network.parameters()).device
    dtype = next(network.parameters()).dtype
    was_training = network.training
    network.eval()
    try:
        out = [network.reconstruct(images[i:i + batch_size].to(device, dtype)).float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        network.train(was_training)
    return torch.cat(out).clamp(-1.0, 1.0)


class ReconstructionGridHandler(EpochGridHandler):
    """Every ``interval`` epochs (and when training completes), reconstruct ``num_images`` fixed images and save
    ``<out_dir>/grid_epoch_NNNN.png``: the originals in the top row, their reconstructions below (RGB for 3
    channels). The names match :class:`medgen.engine.tracking.TensorBoardGrids`, which can log them.

    Args:
        network: the autoencoder (or its EMA copy).
        images: where the fixed images come from: a dataset of ``{"image": (C, H, W) in [-1, 1]}`` items (e.g. the
            training dataset), a sequence of tensors or one ``(N, C, H, W)`` tensor; taken evenly spread.
        out_dir: the run's grid folder.
        interval: epochs between grids.
        num_images: images per row.
    """

    def __init__(self, network: torch.nn.Module, images: Sequence | torch.Tensor, out_dir: str | Path,
                 interval: int = 5, num_images: int = 8) -> None:
        super().__init__(out_dir, interval)
        self.network = network
        self.source = images
        self.num_images = int(num_images)
        self._images: torch.Tensor | None = None

    def __call__(self, engine: Engine) -> None:
        if self._images is None:
            self._images = pick_images(self.source, self.num_images)
        recon = reconstruct(self.network, self._images)
        self.last_path = save_class_grid({"original": list(self._images), "reconstruction": list(recon)},
                                         self._path(engine))
        logger.info("epoch %d: reconstruction grid %s", engine.state.epoch, self.last_path)
