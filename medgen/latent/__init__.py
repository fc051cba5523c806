"""Latent diffusion: a frozen MONAI ``AutoencoderKL`` in front of medgen's diffusion and score models.

- :class:`LatentCache`: a datalist split encoded once (with MONAI's scale-factor rule) and its training dataset;
- :class:`LatentDiffusionPipeline` / :class:`LatentLangevinPipeline`: sampling in latent space, decoded at the end;
- :mod:`medgen.latent.checks`: the one-line errors for an autoencoder that does not fit the diffusion config;
- :mod:`medgen.latent.meta`: what latent diffusion weights record so sampling needs no overrides.
"""

from medgen.latent.cache import LatentCache, ScaledLatentd, encode_on_rank_zero
from medgen.latent.checks import (
    AutoencoderFacts,
    LatentConfigError,
    check_image_size,
    check_latent_config,
    require_autoencoder_weights,
)
from medgen.latent.meta import (
    LATENT_KEYS,
    LatentWeightsMeta,
    check_autoencoder_file,
    check_autoencoder_or_exit,
    check_latent_training,
    latent_weights_config,
)
from medgen.latent.pipeline import LatentDiffusionPipeline, LatentLangevinPipeline, latent_scheduler

__all__ = [
    "LATENT_KEYS",
    "AutoencoderFacts",
    "LatentCache",
    "LatentConfigError",
    "LatentDiffusionPipeline",
    "LatentLangevinPipeline",
    "LatentWeightsMeta",
    "ScaledLatentd",
    "check_autoencoder_file",
    "encode_on_rank_zero",
    "check_autoencoder_or_exit",
    "check_image_size",
    "check_latent_config",
    "check_latent_training",
    "latent_scheduler",
    "latent_weights_config",
    "require_autoencoder_weights",
]
