"""The autoencoder stage of latent diffusion: MONAI ``AutoencoderKL`` trained as a VAE-GAN (L1 + KL, perceptual,
``PatchDiscriminator`` after a warm-up), self-describing weights, the loader later stages call, and a reconstruction
quality report. See docs/autoencoder.md."""

from medgen.autoencoder.handlers import ReconstructionGridHandler, reconstruct
from medgen.autoencoder.losses import DiscriminatorLoss, DomainPerceptualLoss, GeneratorLoss, kl_loss
from medgen.autoencoder.networks import (
    build_autoencoder,
    check_image_size,
    downsampling_factor,
    image_size_problem,
    latent_size,
    trainable_parameters,
)
from medgen.autoencoder.report import reconstruction_report
from medgen.autoencoder.trainer import VaeGanTrainer
from medgen.autoencoder.weights import AutoencoderWeightsMeta, init_autoencoder, load_autoencoder, same_latents

__all__ = [
    "AutoencoderWeightsMeta",
    "DiscriminatorLoss",
    "DomainPerceptualLoss",
    "GeneratorLoss",
    "ReconstructionGridHandler",
    "VaeGanTrainer",
    "build_autoencoder",
    "check_image_size",
    "downsampling_factor",
    "image_size_problem",
    "init_autoencoder",
    "kl_loss",
    "latent_size",
    "load_autoencoder",
    "trainable_parameters",
    "reconstruct",
    "reconstruction_report",
    "same_latents",
]
