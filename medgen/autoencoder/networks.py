"""MONAI's ``AutoencoderKL`` for the latent route, built so that its weights describe themselves.

MONAI's network does not keep its constructor arguments; :func:`build_autoencoder` records them on the instance
(``init_args``, read by :func:`medgen.networks.weights_meta.network_config`) so the sidecar of the exported weights can
rebuild the network without the config, and checks the image size against the downsampling factor before anything
is trained. The discriminator is MONAI's ``PatchDiscriminator``, used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL

#: the class path recorded in the weights' metadata (``network._target_``)
AUTOENCODER_TARGET = "monai.networks.nets.autoencoderkl.AutoencoderKL"


def downsampling_factor(channels: Sequence[int]) -> int:
    """How many pixels per side one latent pixel stands for: ``2 ** (len(channels) - 1)``."""
    return 2 ** (len(channels) - 1)


def _sides(image_size: int | Sequence[int]) -> list[int]:
    return [int(image_size)] * 2 if isinstance(image_size, int) else [int(s) for s in image_size]


def image_size_problem(image_size: int | Sequence[int], channels: Sequence[int]) -> str | None:
    """Why ``image_size`` cannot go through an autoencoder with these ``channels`` (None when it can)."""
    factor = downsampling_factor(channels)
    if all(side % factor == 0 for side in _sides(image_size)):
        return None
    return (f"image_size {image_size} is not divisible by the autoencoder's downsampling factor {factor} "
            f"(2**(len(autoencoder_channels) - 1) with autoencoder_channels {list(channels)}): use an image_size "
            f"that is a multiple of {factor} or fewer autoencoder_channels")


def check_image_size(image_size: int | Sequence[int], channels: Sequence[int]) -> int:
    """For a bundle's run list: the downsampling factor, or the run ends with one line (``SystemExit``) before
    anything is built or trained."""
    from medgen.config import fail

    problem = image_size_problem(image_size, channels)
    if problem:
        fail(problem)
    return downsampling_factor(channels)


def latent_size(image_size: int | Sequence[int], channels: Sequence[int]) -> int | list[int]:
    """The latent's side (int for a square ``image_size``, else ``[H, W]``)."""
    factor = downsampling_factor(channels)
    sides = [side // factor for side in _sides(image_size)]
    return sides[0] if isinstance(image_size, int) else sides


def build_autoencoder(
    in_channels: int = 1,
    channels: Sequence[int] = (64, 128, 128),
    latent_channels: int = 3,
    num_res_blocks: int | Sequence[int] = 2,
    attention_levels: Sequence[bool] | None = None,
    norm_num_groups: int = 32,
    norm_eps: float = 1e-6,
    with_encoder_nonlocal_attn: bool = False,
    with_decoder_nonlocal_attn: bool = False,
    include_fc: bool = False,
    use_convtranspose: bool = False,
    spatial_dims: int = 2,
    image_size: int | Sequence[int] | None = None,
) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` (``out_channels = in_channels``; 1 grey, 3 RGB) with its arguments in ``init_args``.

    ``image_size`` (not a network argument) is checked against the downsampling factor: a size the network cannot
    encode and decode back to itself is a ``ValueError`` naming both keys.
    """
    if image_size is not None:
        problem = image_size_problem(image_size, channels)
        if problem:
            raise ValueError(problem)
    attention = list(attention_levels) if attention_levels is not None else [False] * len(channels)
    args: dict[str, Any] = {
        "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": in_channels,
        "channels": list(channels), "latent_channels": latent_channels,
        "num_res_blocks": list(num_res_blocks) if isinstance(num_res_blocks, Sequence) else num_res_blocks,
        "attention_levels": attention, "norm_num_groups": norm_num_groups, "norm_eps": norm_eps,
        "with_encoder_nonlocal_attn": with_encoder_nonlocal_attn,
        "with_decoder_nonlocal_attn": with_decoder_nonlocal_attn, "include_fc": include_fc,
        "use_convtranspose": use_convtranspose,
    }
    return autoencoder_from_args(args)


def autoencoder_from_args(args: dict[str, Any]) -> AutoencoderKL:
    """``AutoencoderKL(**args)`` that remembers ``args`` (the form the weights' metadata records)."""
    kwargs = {k: v for k, v in args.items() if k != "_target_"}
    network = AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    network.init_args = dict(kwargs)  # recorded with the weights (medgen.networks.weights_meta.network_config)
    return network


#: the modules of MONAI's ``AutoencoderKL`` that make the latents (the others decode them)
ENCODER_MODULES = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")


def is_encoder_tensor(name: str) -> bool:
    """Whether the state-dict entry ``name`` belongs to the encoder half (:data:`ENCODER_MODULES`)."""
    return name.split(".", 1)[0] in ENCODER_MODULES


def encoder_sha256(network: AutoencoderKL) -> str:
    """sha256 of the encoder half's tensors (names and fp16 values, in state-dict order): two autoencoders with
    the same ``encoder_sha256`` make the same latents, whatever their decoders. fp16, the form the weights ship
    in, so fp32 training weights loaded from fp16 hash as the file they came from."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in getattr(network, "module", network).state_dict().items():
        if is_encoder_tensor(name):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


def freeze_encoder(network: AutoencoderKL) -> AutoencoderKL:
    """Stop the encoder half's parameters from training (``requires_grad = False``); returns ``network``."""
    for name, parameter in getattr(network, "module", network).named_parameters():
        if is_encoder_tensor(name):
            parameter.requires_grad_(False)
    return network


def trainable_parameters(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer should update (those that require gradients)."""
    return [p for p in network.parameters() if p.requires_grad]
