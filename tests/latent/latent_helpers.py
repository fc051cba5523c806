"""Helpers of the latent tests: tiny untrained MONAI autoencoders and diffusion networks, real-image datalists."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import AutoencoderKL

from medgen.latent import LatentCache
from medgen.networks import ConditionalDiffusionUNet

IMAGE_SIZE = 32
CLASSES = ["NORMAL", "PNEUMONIA"]


def tiny_autoencoder(seed: int = 0, channels: int = 1) -> AutoencoderKL:
    """Two levels (downsampling factor 2), 3 latent channels, one res block, no attention."""
    torch.manual_seed(seed)
    return AutoencoderKL(spatial_dims=2, in_channels=channels, out_channels=channels, channels=(8, 16),
                         latent_channels=3, num_res_blocks=1, attention_levels=(False, False), norm_num_groups=8,
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def tiny_unet(in_channels: int = 3, seed: int = 0) -> ConditionalDiffusionUNet:
    torch.manual_seed(seed)
    return ConditionalDiffusionUNet(in_channels=in_channels, out_channels=in_channels, channels=(8, 16),
                                    attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
                                    norm_num_groups=8)


def save_autoencoder(autoencoder: AutoencoderKL, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(autoencoder.state_dict(), path)
    return path


def cxr_datalist(kermany: Path, per_class: int = 3) -> dict:
    items = [{"image": str(p), "label": label} for label, name in enumerate(CLASSES)
             for p in sorted((kermany / "train" / name).glob("*.jpeg"))[:per_class]]
    return {"classes": CLASSES, "training": items}


def make_cache(path: Path, autoencoder: AutoencoderKL, weights: Path, datalist: dict, **kw) -> LatentCache:
    return LatentCache(path, autoencoder, datalist, IMAGE_SIZE, autoencoder_weights=weights, batch_size=4, **kw)
