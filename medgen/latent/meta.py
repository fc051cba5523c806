"""What latent diffusion weights record beside ``model.pt`` so sampling needs no overrides, and the checks of it.

The latent diffusion run's :class:`~medgen.networks.weights_meta.WeightsMeta` keeps the pixel facts at the top level
(``image_size``, ``channels``: what evaluation, export and the service read) and adds to its ``config`` section
(:data:`LATENT_KEYS`, read by ``inference.yaml`` through ``meta_value``):

- ``route``: ``"latent"``;
- ``autoencoder_file``, ``autoencoder_sha256``: the autoencoder the latents came from (refused if another is given);
- ``scale_factor``: what the latents were multiplied by in training (sampling divides by it before decoding);
- ``latent_shape``, ``latent_channels``, ``downsampling_factor``: the noise the sampler draws;
- ``image_size``, ``channels``: the decoded images.

``autoencoder_sha256``, ``scale_factor`` and ``latent_shape`` are part of the weights' fingerprint
(:func:`medgen.networks.weights_meta.fingerprint`), so :func:`medgen.engine.runs.check_resume` refuses a checkpoint
trained on other latents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medgen.latent.checks import (
    AutoencoderFacts,
    LatentConfigError,
    check_latent_config,
    network_in_channels,
    require_autoencoder_weights,
)
from medgen.networks.weights_meta import WeightsMeta, meta_value, plain, read_meta, sha256_of

LATENT_KEYS = ("route", "autoencoder_file", "autoencoder_sha256", "scale_factor", "latent_shape", "latent_channels",
               "downsampling_factor", "image_size", "channels")


def latent_weights_config(scale_factor: float, latent_shape: Sequence[int], image_size: int | Sequence[int],
                          channels: int, autoencoder_weights: str | Path | None,
                          autoencoder_sha256: str | None = None) -> dict[str, Any]:
    """The :data:`LATENT_KEYS` of latent diffusion weights (JSON types), for ``WeightsMeta(config=...)``."""
    if autoencoder_sha256 is None:
        if autoencoder_weights is None:
            raise ValueError("latent weights metadata needs the autoencoder's weights file or its sha256")
        autoencoder_sha256 = sha256_of(autoencoder_weights)
    size = (int(image_size),) * 2 if isinstance(image_size, int) else tuple(map(int, image_size))
    shape = [int(s) for s in latent_shape]
    return plain({
        "route": "latent",
        "autoencoder_file": Path(autoencoder_weights).name if autoencoder_weights else None,
        "autoencoder_sha256": autoencoder_sha256,
        "scale_factor": float(scale_factor),
        "latent_shape": shape,
        "latent_channels": shape[0],
        "downsampling_factor": size[-1] // shape[-1],
        "image_size": image_size,
        "channels": int(channels),
    })


class LatentWeightsMeta(WeightsMeta):
    """:class:`~medgen.networks.weights_meta.WeightsMeta` of a latent diffusion run: the pixel facts, the latent
    network and scheduler, and :func:`latent_weights_config` from the run's :class:`~medgen.latent.LatentCache`.

    Args:
        classes, image_size, channels, network, scheduler, datalist, config, bundle: as ``WeightsMeta``
            (``image_size`` and ``channels`` of the pixel images; ``network`` the latent UNet).
        latent_cache: the run's latent cache (scale factor, latent shape, autoencoder file and sha256).
    """

    def __init__(self, classes: Sequence[str], image_size: int | Sequence[int], channels: int,
                 network: torch.nn.Module, scheduler: Any, latent_cache: Any,
                 datalist: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 bundle: str | None = None) -> None:
        latent = latent_weights_config(latent_cache.scale_factor, latent_cache.latent_shape, image_size, channels,
                                       latent_cache.autoencoder_weights, latent_cache.autoencoder_sha256)
        super().__init__(classes, image_size, channels, network, scheduler, datalist, {**(config or {}), **latent},
                         bundle)


def check_autoencoder_file(autoencoder_path: str | Path | None, meta: Mapping[str, Any] | None,
                           weights: str | Path | None = None, key: str = "autoencoder_path") -> Path:
    """The autoencoder weights at ``autoencoder_path``, if they are those the diffusion weights (metadata ``meta``)
    were trained with, or those with only the decoder fine-tuned (encoder frozen, so the same latents:
    :func:`medgen.autoencoder.same_latents`); :class:`~medgen.latent.LatentConfigError` (one line, both files
    named) if they are not or there are none. Weights without a recorded autoencoder accept any."""
    path = require_autoencoder_weights(autoencoder_path, key, stage="sampling")
    recorded = meta_value(meta, "autoencoder_sha256")
    if not recorded:
        return path
    actual = sha256_of(path)
    if actual != recorded and not fine_tuned_decoder_of(path, recorded):
        named = meta_value(meta, "autoencoder_file") or "an autoencoder"
        raise LatentConfigError(
            f"the autoencoder {path} (config key '{key}', sha256 {actual[:12]}...) is not the one the diffusion "
            f"weights {weights or ''} were trained on ({named}, sha256 {recorded[:12]}...): give that autoencoder, "
            "or diffusion weights trained on this one")
    return path


def fine_tuned_decoder_of(path: Path, recorded_sha256: str) -> bool:
    """Whether the autoencoder at ``path`` is the one with ``recorded_sha256`` with only its decoder fine-tuned."""
    from medgen.autoencoder.weights import load_autoencoder, same_latents
    from medgen.networks.weights_meta import WeightsFileError

    try:
        network, autoencoder_meta = load_autoencoder(path)
    except WeightsFileError:
        return False
    return same_latents(autoencoder_meta, network, recorded_sha256)


def check_autoencoder_or_exit(autoencoder_path: str | Path | None, diffusion_weights: str | Path,
                              key: str = "autoencoder_path") -> Path:
    """:func:`check_autoencoder_file` against the metadata of ``diffusion_weights`` for a bundle's run list: a
    missing or other autoencoder ends the run with one line (``SystemExit``), not a traceback."""
    from medgen.config import fail

    try:
        return check_autoencoder_file(autoencoder_path, read_meta(diffusion_weights, warn=False), diffusion_weights,
                                      key)
    except LatentConfigError as err:
        fail(str(err))
        raise  # unreachable: fail() raises


def check_latent_training(autoencoder_path: str | Path | None, autoencoder: torch.nn.Module | None = None,
                          image_size: int | Sequence[int] | None = None, network: torch.nn.Module | None = None,
                          latent_size: int | Sequence[int] | None = None, channels: int | None = None,
                          config_file: str = "train_diffusion.yaml") -> AutoencoderFacts:
    """For a bundle's run list, before anything is trained: the autoencoder exists and fits the config, else
    the run ends with one line (``SystemExit`` through MONAI's config parser, as :func:`medgen.config.fail`).

    Without ``autoencoder`` only the weights' existence is checked (call it so before the config loads them); the
    scale factor is checked against the data by :meth:`LatentCache.check_scale_factor`.
    """
    from medgen.config import fail

    try:
        path = require_autoencoder_weights(autoencoder_path)
        if autoencoder is None:
            return AutoencoderFacts(0, 1, 0, str(path))
        facts = AutoencoderFacts.of(autoencoder, path)
        sizes = (image_size, latent_size) if image_size is not None else (facts.downsampling_factor, None)
        check_latent_config(facts, sizes[0], network_in_channels(network) if network is not None else None,
                            sizes[1], None, None, config_file, channels=channels)
        return facts
    except LatentConfigError as err:
        fail(str(err))
        raise  # unreachable: fail() raises
