"""Checks made before a latent diffusion stage builds anything: one line naming the keys and files.

What the autoencoder is (latent channels, downsampling factor, image channels) is read off the MONAI
``AutoencoderKL`` itself (:class:`AutoencoderFacts`), so a check needs no extra bookkeeping; the diffusion side comes
from the config keys the user can change (``image_size``, ``network_def#in_channels``, ``latent_size``,
``scale_factor``). MONAI's ``LatentDiffusionInferer`` checks none of these, hence this module. It imports nothing of
medgen, so ``medgen zoo-export`` copies it into a latent bundle's ``scripts/``; the run-list wrappers that end a bundle
run with one line (``check_latent_training``, ``check_autoencoder_or_exit``) are in :mod:`medgen.latent.meta`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


def train_autoencoder_hint(path: str | Path | None) -> str:
    """Where the fix for a missing autoencoder is, for the error message: the bundle's own
    ``train_autoencoder.yaml`` when ``path`` lies in a bundle's ``models/`` folder."""
    config = Path("bundles/<bundle>/configs/train_autoencoder.yaml")
    if path:
        candidate = Path(path).parent.parent / "configs" / "train_autoencoder.yaml"
        if Path(path).parent.name == "models" and candidate.is_file():
            config = candidate
    return (f"train the autoencoder first: python -m monai.bundle run training --config_file {config} "
            "(or set autoencoder_path to its model_autoencoder.pt)")


class LatentConfigError(ValueError):
    """A latent diffusion setting that cannot work, in one line naming the key(s) and file(s)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class AutoencoderFacts:
    """What the diffusion stage needs to know of an autoencoder.

    Args:
        latent_channels: channels of its latents.
        downsampling_factor: image side / latent side (2 per encoder level after the first).
        channels: image channels it encodes and decodes.
        path: its weights file (named in errors), if known.
    """

    latent_channels: int
    downsampling_factor: int
    channels: int
    path: str | None = None

    @classmethod
    def of(cls, autoencoder: torch.nn.Module, path: str | Path | None = None) -> AutoencoderFacts:
        """The facts of a MONAI ``AutoencoderKL`` (its encoder halves the size at every level but the last)."""
        encoder = getattr(autoencoder, "encoder", None)
        levels = getattr(encoder, "channels", None)
        if encoder is None or levels is None or not hasattr(autoencoder, "latent_channels"):
            raise TypeError(f"expected a MONAI AutoencoderKL (encoder.channels, latent_channels), got "
                            f"{type(autoencoder).__name__}")
        return cls(int(autoencoder.latent_channels), 2 ** (len(levels) - 1), int(encoder.in_channels),
                   str(path) if path else None)

    @property
    def name(self) -> str:
        return f"the autoencoder {self.path}" if self.path else "the autoencoder"

    def latent_size(self, image_size: int | Sequence[int]) -> tuple[int, ...]:
        """Latent spatial size of images of ``image_size`` (checked divisible by the factor)."""
        size = _size(image_size)
        check_image_size(size, self, key="image_size")
        return tuple(s // self.downsampling_factor for s in size)

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, ...]:
        """``(latent_channels, *latent_size)``."""
        return (self.latent_channels, *self.latent_size(image_size))


def _size(image_size: int | Sequence[int]) -> tuple[int, ...]:
    return (int(image_size),) * 2 if isinstance(image_size, (int, float)) else tuple(int(s) for s in image_size)


def _show(size: Sequence[int]) -> str:
    return str(size[0]) if len(set(size)) == 1 else "x".join(map(str, size))


def require_autoencoder_weights(path: str | Path | None, key: str = "autoencoder_path",
                                stage: str = "the latent diffusion stage") -> Path:
    """``path`` if the autoencoder's weights exist there, else :class:`LatentConfigError` naming the path and
    ``stage`` (what cannot start: training, sampling)."""
    if not path:
        raise LatentConfigError(f"config key '{key}' is empty: {stage} needs the trained autoencoder; "
                                f"{train_autoencoder_hint(path)}")
    path = Path(path)
    if not path.is_file():
        raise LatentConfigError(f"no autoencoder weights at {path} (config key '{key}'): {stage} cannot start "
                                f"before the autoencoder is trained; {train_autoencoder_hint(path)}")
    return path


def check_image_size(image_size: int | Sequence[int], facts: AutoencoderFacts, key: str = "image_size") -> None:
    """Every side of ``image_size`` must be a multiple of the autoencoder's downsampling factor."""
    size, f = _size(image_size), facts.downsampling_factor
    if any(s % f for s in size):
        near = sorted({max(f, s // f * f) for s in size} | {math.ceil(s / f) * f for s in size})
        raise LatentConfigError(
            f"config key '{key}' {_show(size)} is not divisible by the downsampling factor {f} of {facts.name} "
            f"(latents are image_size / {f}): use {' or '.join(map(str, near))}")


def network_in_channels(network: torch.nn.Module) -> int | None:
    """Input channels of a diffusion or score network, looking through medgen's wrappers; None if unknown."""
    seen = 0
    while network is not None and seen < 8:
        value = getattr(network, "in_channels", None)
        if isinstance(value, int):
            return value
        network = next((getattr(network, a) for a in ("unet", "network", "module")
                        if isinstance(getattr(network, a, None), torch.nn.Module)), None)
        seen += 1
    return None


def check_latent_config(facts: AutoencoderFacts, image_size: int | Sequence[int], network_in_channels: int | None,
                        latent_size: int | Sequence[int] | None = None, scale_factor: float | None = None,
                        data_scale_factor: float | None = None, config_file: str = "the diffusion config",
                        scale_source: str = "the latent cache", channels: int | None = None) -> None:
    """The diffusion config must fit the autoencoder; the first mismatch raises :class:`LatentConfigError`.

    Args:
        facts: the autoencoder's (:meth:`AutoencoderFacts.of`).
        image_size: the config's ``image_size`` (pixels).
        network_in_channels: the diffusion network's ``in_channels`` (``network_def#in_channels``).
        latent_size: the config's ``latent_size``, when it states one.
        scale_factor: the config's ``scale_factor`` (e.g. from diffusion weights being resumed), when it states one.
        data_scale_factor: the scale factor this autoencoder gives on the data (:attr:`LatentCache.scale_factor`).
        config_file: named in the message.
        scale_source: where ``data_scale_factor`` came from, named in the message.
        channels: the config's ``channels`` (image channels), when it states one.
    """
    if channels is not None and int(channels) != facts.channels:
        raise LatentConfigError(
            f"config key 'channels' is {channels} in {config_file} but {facts.name} encodes {facts.channels}-channel "
            "images: set channels to match or give the autoencoder trained on these images")
    if network_in_channels is not None and int(network_in_channels) != facts.latent_channels:
        raise LatentConfigError(
            f"config key 'network_def#in_channels' is {network_in_channels} in {config_file} but {facts.name} makes "
            f"{facts.latent_channels}-channel latents (its latent_channels): set latent_channels "
            f"{facts.latent_channels} or give the autoencoder the diffusion model was built for")
    size = facts.latent_size(image_size)
    if latent_size is not None and _size(latent_size) != size:
        raise LatentConfigError(
            f"config key 'latent_size' is {_show(_size(latent_size))} in {config_file} but {facts.name} turns "
            f"image_size {_show(_size(image_size))} into {_show(size)} latents (factor {facts.downsampling_factor}): "
            f"set latent_size {_show(size)} (or null) or image_size "
            f"{_show([s * facts.downsampling_factor for s in _size(latent_size)])}")
    if scale_factor is not None and data_scale_factor is not None and not math.isclose(
            float(scale_factor), float(data_scale_factor), rel_tol=1e-3):
        raise LatentConfigError(
            f"config key 'scale_factor' is {float(scale_factor):.6g} in {config_file} but {facts.name} gives "
            f"{float(data_scale_factor):.6g} on this data ({scale_source}): the diffusion weights were made with "
            "another autoencoder or data; set scale_factor null (computed from the data) or give that autoencoder")
