"""Autoguidance's guide network: load it and check it belongs to the model it guides.

Guidance moves each sampling step from a weaker prediction towards the model's own: ``weak + w (cond - weak)``.
Classifier-free guidance takes the weak prediction from the same network without the class (the null class);
autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") takes it from a *guide*:
a smaller network of the same task, trained for a fraction of the time and asked with the same class. Its errors are
the main model's, made larger, so the difference points away from them without the loss of variety that pushing
away from the unconditional prediction brings. MONAI and diffusers have no autoguidance; this module is the part
they lack (the step itself is :meth:`medgen.diffusion.DiffusionPipeline.predict`).

A bundle ships its guide as ``models/model_guide.pt`` beside the weights it was chosen for (its metadata records their
sha256, :func:`default_guide`); ``guide_path`` in ``inference.yaml`` picks it, another, or ``none``. A guide must
predict the same thing on the same schedule for the same classes and images as the main weights: the
keys in :data:`MATCH_KEYS` (and where both record them, the training data and how images were prepared) must agree,
checked against both weights' metadata (``model.json``) before anything is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medgen.networks.weights_meta import (
    LATENT_FINGERPRINT_KEYS,
    PREPROCESSING_KEYS,
    WeightsFileError,
    differences,
    meta_value,
    read_meta,
    sha256_of,
)

logger = logging.getLogger(__name__)

#: a bundle's shipped guide, beside its model.pt
GUIDE_FILE = "model_guide.pt"
#: the ``guide_path`` value for classifier-free guidance
OFF = "none"

#: metadata keys a guide must share with the weights it guides
MATCH_KEYS = ("classes", "image_size", "channels", "scheduler")
#: compared where both weights record them (older weights do not record their training data)
MATCH_IF_RECORDED = ("datalist_sha256", *PREPROCESSING_KEYS, *LATENT_FINGERPRINT_KEYS)
_FIX = "give a guide trained by the same bundle on the same data (a smaller --unet_channels, a short --time_limit)"


def default_guide(bundle_root: str | Path, weights: str | Path) -> str | None:
    """The bundle's shipped guide (``models/model_guide.pt``) when ``weights`` are the weights it was chosen for (the
    ``guides_sha256`` its metadata records), else None: other weights (a user's own training) sample with
    classifier-free guidance until they are given a guide of their own (``guide_path``)."""
    path = Path(bundle_root) / "models" / GUIDE_FILE
    if not path.is_file():
        return None
    target = (read_meta(path, warn=False) or {}).get("guides_sha256")
    if target and Path(weights).is_file() and sha256_of(weights) == target:
        return str(path)
    logger.info("%s guides other weights than %s: sampling with classifier-free guidance", path, weights)
    return None


def guide_differences(guide: Mapping[str, Any], main: Mapping[str, Any]) -> list[str]:
    """``"key A (guide) vs B (weights)"`` for each key on which a guide's metadata and the main weights' differ."""
    found = {k: meta_value(guide, k) for k in MATCH_KEYS}
    wanted = {k: meta_value(main, k) for k in MATCH_KEYS}
    for key in MATCH_IF_RECORDED:
        a, b = meta_value(guide, key), meta_value(main, key)
        both_recorded = a is not None and b is not None
        if both_recorded or (key in LATENT_FINGERPRINT_KEYS and (a is None) != (b is None)):  # latent vs pixel
            found[key], wanted[key] = a, b
    # what the sampler sees: EDM-preconditioned weights are turned into epsilon (medgen.diffusion.objectives)
    for meta, into in ((guide, found), (main, wanted)):
        if (meta_value(meta, "preconditioning", "none") or "none") != "none":
            into["scheduler"] = {**(into["scheduler"] or {}), "prediction_type": "epsilon"}
    return differences(found, wanted, keys=list(found), labels=("guide", "weights"))


def trained_on_same_latents(guide: Mapping[str, Any], guide_path: str | Path, main: Mapping[str, Any],
                            weights: str | Path) -> bool:
    """Whether a latent guide and the latent weights it guides, recording different autoencoders, were trained on
    the same latents: one autoencoder is the other with only its decoder fine-tuned (encoder frozen), as a bundle's
    shipped autoencoder is when its decoder was improved after the diffusion weights were trained. The autoencoder
    files looked at are those the two metadata name, beside each weights file."""
    from medgen.latent.meta import fine_tuned_decoder_of

    shas = meta_value(guide, "autoencoder_sha256"), meta_value(main, "autoencoder_sha256")
    if None in shas or shas[0] == shas[1]:
        return False
    for meta, beside in ((main, weights), (guide, guide_path)):
        name = meta_value(meta, "autoencoder_file")
        candidate = Path(beside).parent / Path(name).name if name else None
        if candidate is None or not candidate.is_file():
            continue
        actual = sha256_of(candidate)
        if actual in shas and fine_tuned_decoder_of(candidate, shas[1] if actual == shas[0] else shas[0]):
            return True
    return False


def guide_network(path: str | Path | None, weights: str | Path, scheduler: Any,
                  device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """For a bundle config: :func:`load_guide`, or None (classifier-free guidance) for no path or ``none`` (what
    ``--guide_path none`` gives: ``monai.bundle run`` drops a ``None`` override). A guide that cannot be used
    (missing, damaged, without metadata, of another task) ends the run with one line (``SystemExit``), not a
    traceback through MONAI's config parser."""
    from medgen.config import fail

    if not path or str(path).lower() == OFF:
        return None
    try:
        return load_guide(path, weights, scheduler, device)
    except WeightsFileError as err:
        fail(f"guide_path: {err}")
        raise AssertionError from err  # unreachable: fail() raises


def load_guide(path: str | Path, weights: str | Path, scheduler: Any,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """The guide network in ``path`` as samplers call it (eval mode, on ``device``), after checking its metadata
    against that of ``weights`` (the model it guides): a missing or damaged file, a guide without metadata, or one
    of another task raises :class:`~medgen.networks.weights_meta.WeightsFileError`, one line naming the file and
    the keys. ``scheduler``: the bundle's training scheduler (for a guide trained with EDM preconditioning)."""
    from monai.bundle import ConfigParser

    from medgen.diffusion.objectives import for_sampling
    from medgen.diffusion.sample_run import check_weights_file, load_weights

    path = check_weights_file(path)
    meta = read_meta(path, warn=False)
    if not meta or not isinstance(meta.get("network"), dict):
        raise WeightsFileError(path, "weights of another network", "no metadata (model.json beside it), so the "
                               "guide's network and what it predicts are unknown", _FIX)
    main = read_meta(weights, warn=False)
    if main and trained_on_same_latents(meta, path, main, weights):  # a decoder fine-tuning between them
        meta = {**meta, "config": {**meta.get("config", {}),
                                   "autoencoder_sha256": meta_value(main, "autoencoder_sha256")}}
    diffs = guide_differences(meta, main) if main else []
    if diffs:
        raise WeightsFileError(path, "weights of another network", "a guide of another task: " + "; ".join(diffs),
                               _FIX)
    try:
        network = ConfigParser({"network": meta["network"]}).get_parsed_content("network")
    except Exception as err:  # noqa: BLE001 - whatever the recorded arguments do, they do not build the guide
        raise WeightsFileError(path, "weights of another network", f"its recorded network does not build: "
                               f"{str(err).splitlines()[0][:160]}", _FIX) from err
    load_weights(network, path)
    preconditioning = meta_value(meta, "preconditioning", "none")
    sigma_data = meta_value(meta, "edm_sigma_data", 0.5)
    guide = for_sampling(network.to(device).eval(), scheduler, preconditioning, sigma_data)
    guide.weights_file = str(path)  # what SampleRunner records (and hashes) beside each image
    return guide
