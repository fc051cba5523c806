"""The VAE-GAN objective of MONAI's generative tutorials and Model Zoo latent-diffusion bundles: L1 reconstruction
+ KL, a perceptual loss, and MONAI's least-squares ``PatchAdversarialLoss`` against a ``PatchDiscriminator``.

MONAI's ``PerceptualLoss`` takes only its fixed feature networks (LPIPS' AlexNet/VGG/SqueezeNet, torchvision
ResNet-50, MedicalNet, RadImageNet), whose weights are downloaded; :class:`DomainPerceptualLoss` is the offline gap:
the same LPIPS-style distance on the activations of medgen's domain classifier
(:mod:`medgen.metrics.classifier`), a network trained here on the data set's own images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss

#: the domain classifier's stages whose activations the perceptual distance compares
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(z_mu, z_sigma^2) from N(0, 1), summed over a latent and averaged over the batch (as in
    MONAI's AutoencoderKL tutorials)."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=dims)
    return kl.mean()


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Activations scaled to unit length along the channels at every position (LPIPS' normalisation)."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class DomainPerceptualLoss(torch.nn.Module):
    """LPIPS-style perceptual distance on a frozen domain classifier (MONAI ResNet-18 layout, grey or RGB).

    For each of ``layers`` the activations of both images are normalised to unit length over channels, their
    squared difference summed over channels and averaged over positions; the figure is the mean over layers and the
    batch. No learned per-channel weights (LPIPS' "lin" layer): every channel counts alike.

    Args:
        weights: a classifier file written by :func:`medgen.metrics.classifier.save_classifier` (e.g. the cached
            one :func:`medgen.metrics.domain_model.ensure_domain_classifier` trains on the training split).
        layers: ResNet stages to compare (``stem``, ``layer1`` .. ``layer4``).
        input_size: resize images to this side first (the classifier's training size); None: native resolution.
        network: an already built classifier instead of ``weights``.

    Inputs are images in [-1, 1] (the classifier's and training's range) with the classifier's channels.
    """

    def __init__(self, weights: str | os.PathLike | None = None, layers: Sequence[str] = RESNET_LAYERS,
                 input_size: int | None = None, network: torch.nn.Module | None = None) -> None:
        super().__init__()
        if network is None:
            if weights is None:
                raise ValueError("DomainPerceptualLoss needs the domain classifier's weights (weights=...)")
            from medgen.metrics.classifier import load_classifier

            network, _, _ = load_classifier(weights)
        unknown = [name for name in layers if name != "stem" and name not in RESNET_LAYERS]
        if unknown or not layers:
            raise ValueError(f"perceptual layers must be among stem, {', '.join(RESNET_LAYERS)}; got {list(layers)}")
        self.network = network.eval().requires_grad_(False)
        self.layers = list(layers)
        self.input_size = input_size
        self.weights = str(weights) if weights else None
        self.channels = int(network.conv1.in_channels)

    def train(self, mode: bool = True) -> DomainPerceptualLoss:
        super().train(mode)
        self.network.eval()  # frozen: batch norm keeps its running statistics
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of ``layers`` for images in [-1, 1]."""
        if x.shape[1] != self.channels:
            raise ValueError(f"the perceptual loss's domain classifier {self.weights or ''} takes {self.channels}-"
                             f"channel images, these have {x.shape[1]}: train it on images like these")
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        net = self.network
        if net.conv1.weight.device != x.device:  # follows the images (a config builds it on the CPU)
            net.to(x.device)
        x = net.act(net.bn1(net.conv1(x)))
        out = [x] if "stem" in self.layers else []
        if not net.no_max_pool:
            x = net.maxpool(x)
        last = max(RESNET_LAYERS.index(name) for name in self.layers if name != "stem") \
            if any(name != "stem" for name in self.layers) else -1
        for name in RESNET_LAYERS[: last + 1]:
            x = getattr(net, name)(x)
            if name in self.layers:
                out.append(x)
        return out

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        both = self.features(torch.cat([input, target]).float())
        n = input.shape[0]
        # compared in fp32 (the features may be bf16 under autocast)
        per_layer = [((_unit(f[:n].float()) - _unit(f[n:].float())) ** 2).sum(dim=1).mean() for f in both]
        return torch.stack(per_layer).mean()


class GeneratorLoss:
    """The autoencoder's (generator's) objective:
    ``L1 + kl_weight * KL + perceptual_weight * perceptual + adv_weight * adversarial``.

    The adversarial term (MONAI ``PatchAdversarialLoss``, least squares) enters only when the trainer passes the
    discriminator's logits of the reconstruction (after its warm-up). ``perceptual_weight`` 0 needs no feature
    network. Returns every term (detached except ``loss``) so the trainer can report them.
    """

    def __init__(self, kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
                 perceptual_loss: torch.nn.Module | None = None, adv_weight: float = 0.01) -> None:
        if perceptual_weight and perceptual_loss is None:
            raise ValueError(f"perceptual_weight {perceptual_weight} needs a perceptual_loss (its feature network); "
                             "set perceptual_weight 0 to train without one")
        self.kl_weight = float(kl_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_loss = perceptual_loss if self.perceptual_weight else None
        self.adv_weight = float(adv_weight)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")

    def __call__(self, reconstruction: torch.Tensor, images: torch.Tensor, z_mu: torch.Tensor,
                 z_sigma: torch.Tensor, logits_fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        recon = F.l1_loss(reconstruction.float(), images.float())
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = recon + self.kl_weight * kl
        zero = torch.zeros((), device=images.device)
        perceptual = adv = zero
        if self.perceptual_loss is not None:
            perceptual = self.perceptual_loss(reconstruction.float(), images.float())
            loss = loss + self.perceptual_weight * perceptual
        if logits_fake is not None:
            adv = self.adversarial(logits_fake, target_is_real=True, for_discriminator=False)
            loss = loss + self.adv_weight * adv
        return {"loss": loss, "recon_loss": recon.detach(), "kl_loss": kl.detach(),
                "perceptual_loss": perceptual.detach(), "adv_loss": adv.detach()}


class DiscriminatorLoss:
    """The discriminator's objective: ``adv_weight * (LS(fake, 0) + LS(real, 1)) / 2`` (MONAI
    ``PatchAdversarialLoss``, least squares), on the logits of reconstructions and of real images."""

    def __init__(self, adv_weight: float = 0.01) -> None:
        self.adv_weight = float(adv_weight)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")

    def __call__(self, logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
        fake = self.adversarial(logits_fake, target_is_real=False, for_discriminator=True)
        real = self.adversarial(logits_real, target_is_real=True, for_discriminator=True)
        return self.adv_weight * (fake + real) * 0.5
