"""Self-describing autoencoder weights: the metadata a run records with them, and the loader later stages call.

The exported ``model.pt`` is a plain fp16 state dict of MONAI's ``AutoencoderKL``; its sidecar ``model.json``
(:mod:`medgen.networks.weights_meta`) records the classes, image size, channels, the constructor arguments, the latent
channels and size, the downsampling factor, how images were prepared and the training data's fingerprint, so the
latent diffusion stage rebuilds the network from the file alone and checks it against its own config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL

from medgen.autoencoder.networks import (
    AUTOENCODER_TARGET,
    autoencoder_from_args,
    downsampling_factor,
    encoder_sha256,
    freeze_encoder,
    latent_size,
)
from medgen.networks.weights_meta import (
    WeightsFileError,
    WeightsMeta,
    differences,
    meta_value,
    plain,
    read_meta,
    sha256_of,
    sidecar_path,
)

KIND = "autoencoder"
#: what a fine-tuned autoencoder records about the weights it started from (its ``config`` section)
FINE_TUNE_KEYS = ("init_sha256", "encoder_frozen", "encoder_sha256", "same_latents_as")
#: the range of the images the autoencoder takes and returns (training's ``diffusion_transforms``)
INTENSITY_RANGE = [-1.0, 1.0]
_SIZE_KEYS = ("image_size", "latent_size")


class AutoencoderWeightsMeta(WeightsMeta):
    """The metadata of an autoencoder training run (:class:`~medgen.networks.weights_meta.WeightsMeta`, no noise
    scheduler), a component a bundle config builds once: every checkpoint carries it (``medgen_meta``) and the
    exported weights' sidecar records it. Resume compares its fingerprint (training data, classes, image size,
    channels, network arguments, preprocessing) as in the pixel bundles.

    ``network`` must come from :func:`~medgen.autoencoder.networks.build_autoencoder` (it records its arguments).
    ``config`` holds the bundle keys later stages take from the weights (``resize_mode``, ``window``, ...).

    A network started from other weights by :func:`init_autoencoder` adds what it started from to ``config``
    (:data:`FINE_TUNE_KEYS`): ``init_sha256``, and with the encoder frozen ``encoder_sha256`` and
    ``same_latents_as`` (the files whose latents it makes), so the sampling check
    (:func:`same_latents`) accepts the new weights for diffusion weights trained on the old ones.
    """

    def __init__(self, classes: Sequence[str], image_size: int | Sequence[int], channels: int,
                 network: torch.nn.Module, datalist: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, bundle: str | None = None) -> None:
        args = getattr(getattr(network, "module", network), "init_args", None)
        if args is None or not isinstance(getattr(network, "module", network), AutoencoderKL):
            raise ValueError("AutoencoderWeightsMeta needs the AutoencoderKL built by "
                             "medgen.autoencoder.build_autoencoder (it records the constructor arguments)")
        if int(args["in_channels"]) != int(channels):
            raise ValueError(f"channels {channels} differs from the autoencoder's in_channels {args['in_channels']}")
        factor = downsampling_factor(args["channels"])
        fine_tune = getattr(getattr(network, "module", network), "fine_tune", None) or {}
        super().__init__(classes, image_size, channels, network, None, datalist,
                         {**dict(config or {}), "intensity_range": INTENSITY_RANGE, **fine_tune}, bundle)
        self.meta.update(kind=KIND, scheduler=None, prediction_type=None,
                         latent_channels=int(args["latent_channels"]), downsampling_factor=factor,
                         latent_size=latent_size(image_size, args["channels"]))


def _same_size(found: Any, wanted: Any) -> bool:
    """An int side equals ``[side, side]``."""
    def sides(v: Any) -> Any:
        return [int(v)] * 2 if isinstance(v, (int, float)) and not isinstance(v, bool) else plain(v)
    return sides(found) == sides(wanted)


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The weights' metadata, or :class:`WeightsFileError` saying why there is none that fits."""
    side = sidecar_path(path)
    fix = f"give the model.pt that autoencoder training wrote, with its {side.name} beside it"
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsFileError(path, "truncated or damaged", f"its metadata {side} cannot be read: "
                                   f"{str(err).splitlines()[0][:120]}", fix) from err
        if not isinstance(meta, dict):
            raise WeightsFileError(path, "truncated or damaged", f"its metadata {side} is not a JSON object", fix)
        if meta.get("weights_sha256") not in (None, sha256_of(path)):
            raise WeightsFileError(path, "weights of another network",
                                   f"its metadata {side} describes other weights (sha256 differs)", fix)
    else:
        meta = read_meta(path, warn=False)  # a training checkpoint carries it inside
        if meta is None:
            raise WeightsFileError(path, "weights of another network", f"no metadata ({side.name} missing), so "
                                   "the autoencoder's arguments are unknown", fix)
    network = meta.get("network") if isinstance(meta.get("network"), dict) else {}
    if meta.get("kind") != KIND or network.get("_target_") != AUTOENCODER_TARGET:
        raise WeightsFileError(path, "weights of another network", f"its metadata describes a "
                               f"{network.get('_target_', 'network')} ({meta.get('kind') or 'not an autoencoder'})",
                               "give autoencoder weights")
    return meta


def check_expected(meta: Mapping[str, Any], expect: Mapping[str, Any], path: str | Path) -> None:
    """:class:`WeightsFileError` naming the file and every key of ``expect`` whose recorded value differs (keys
    are looked up in the metadata's ``config`` section, then at its top level, as bundle keys)."""
    diffs = []
    for key, wanted in expect.items():
        found = meta_value(meta, key)
        if not (key in _SIZE_KEYS and _same_size(found, wanted)):
            diffs += differences({key: found}, {key: wanted}, keys=[key], labels=("weights", "expected"))
    if diffs:
        raise WeightsFileError(path, "weights of another network", "; ".join(diffs),
                               "give autoencoder weights trained with these settings, or make the config match them")


def load_autoencoder(path: str | Path, expect: dict | None = None) -> tuple[AutoencoderKL, dict]:
    """The ``AutoencoderKL`` in ``path`` (in eval mode, fp32, on the CPU) and its metadata.

    The network is rebuilt from the constructor arguments its sidecar records and loaded strictly. A missing,
    truncated or foreign file, unreadable or missing metadata, or ``expect`` (bundle keys such as ``channels``,
    ``latent_channels``, ``image_size``, ``downsampling_factor``, ``classes``) disagreeing with the metadata raise
    :class:`~medgen.networks.weights_meta.WeightsFileError`: one line naming the file and the keys.
    """
    from medgen.diffusion.sample_run import check_weights_file, load_weights

    path = check_weights_file(path)
    meta = _read_sidecar(path)
    if expect:
        check_expected(meta, expect, path)
    try:
        network = autoencoder_from_args(meta["network"])
    except (TypeError, ValueError) as err:
        raise WeightsFileError(path, "weights of another network", f"its recorded AutoencoderKL arguments do not "
                               f"build: {str(err).splitlines()[0][:160]}", "give autoencoder weights") from err
    load_weights(network, path)
    return network.float().eval(), meta


def init_autoencoder(network: AutoencoderKL, init_weights: str | Path | None = None,
                     train_encoder: bool = True) -> AutoencoderKL:
    """``network`` (from :func:`~medgen.autoencoder.networks.build_autoencoder`) started from the autoencoder
    weights ``init_weights`` (fine-tuning) instead of random weights; ``network`` unchanged when None.

    ``train_encoder=False`` freezes the encoder half: only the decoder trains, so the latents stay those of
    ``init_weights`` and diffusion weights trained on them stay valid with the fine-tuned decoder (recorded as
    ``init_sha256`` / ``encoder_sha256`` / ``same_latents_as``, :data:`FINE_TUNE_KEYS`; starting again from such
    weights keeps the chain). Weights of another architecture, or a frozen
    encoder with nothing to start from, raise ``ValueError`` (one line naming the file and the keys).
    """
    if init_weights is None:
        if not train_encoder:
            raise ValueError("train_encoder false needs init_weights: a frozen encoder must come from trained "
                             "autoencoder weights (a model_autoencoder.pt)")
        return network
    source, meta = load_autoencoder(init_weights)
    wanted = getattr(network, "init_args", {})
    diffs = differences(source.init_args, wanted, keys=sorted(set(source.init_args) | set(wanted)),
                        labels=("init_weights", "config"))
    if diffs:
        raise WeightsFileError(init_weights, "weights of another network", "; ".join(diffs),
                               "start from autoencoder weights with these autoencoder_* settings, or make the "
                               "config match them")
    network.load_state_dict(source.state_dict())
    init_sha = sha256_of(init_weights)
    network.fine_tune = {"init_sha256": init_sha, "encoder_frozen": not train_encoder}
    if not train_encoder:
        freeze_encoder(network)
        network.fine_tune["encoder_sha256"] = encoder_sha256(network)
        # the files whose latents these are: init_weights, and those it was itself decoder-fine-tuned from
        before = latent_origins(meta.get("config") or {}) if same_latents(meta, source, None) else []
        network.fine_tune["same_latents_as"] = [*before, init_sha]
    return network


def latent_origins(config: Mapping[str, Any]) -> list[str]:
    """The files a decoder fine-tuning's ``config`` says it makes the latents of: ``same_latents_as``, or, in weights
    written before that key existed, ``init_sha256`` alone."""
    return list(config.get("same_latents_as") or [config.get("init_sha256")])


def same_latents(autoencoder_meta: Mapping[str, Any] | None, network: AutoencoderKL,
                 recorded_sha256: str | None) -> bool:
    """Whether an autoencoder whose file is not ``recorded_sha256`` still makes that file's latents: its metadata
    says its decoder alone was fine-tuned from that file (``same_latents_as``, through any chain of such
    fine-tunings), and its encoder tensors hash as they did then. ``recorded_sha256`` None: whether it is a
    decoder fine-tuning at all, with its encoder intact."""
    if not autoencoder_meta:
        return False
    config = autoencoder_meta.get("config") or {}
    origins = latent_origins(config)
    return (bool(config.get("encoder_frozen")) and (recorded_sha256 is None or recorded_sha256 in origins)
            and config.get("encoder_sha256") == encoder_sha256(network))
