"""The pieces wire in a MONAI bundle config as docs/latent.md shows: the diffusion stage's checks, cache, dataset and
weights metadata, then inference built from the weights' metadata alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from latent_helpers import CLASSES, IMAGE_SIZE, tiny_autoencoder
from monai.bundle import ConfigParser

import medgen.latent
import medgen.networks.weights_meta as weights
from medgen.networks.weights_meta import write_sidecar


def load_autoencoder(path: str):
    """Stands in for medgen.autoencoder.load_autoencoder: (AutoencoderKL, meta)."""
    autoencoder = tiny_autoencoder()
    autoencoder.load_state_dict(torch.load(path, weights_only=True))
    return autoencoder, {"image_size": IMAGE_SIZE, "channels": 1, "latent_channels": 3}


UNET = {"_target_": "medgen.networks.ConditionalDiffusionUNet", "in_channels": "@latent_channels",
        "out_channels": "@latent_channels", "num_classes": "$len(@classes)", "channels": [8, 16],
        "attention_levels": [False, False], "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 8}
SCHEDULER = {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000}

# what a bundle's "imports" give its expressions (``monai.bundle run`` evaluates them; a bare parser takes globals)
GLOBALS = {"os": os, "torch": torch, "medgen": medgen, "weights": weights, "load_autoencoder": load_autoencoder}


def train_config(cxr: dict, out: Path, autoencoder_path: Path) -> dict:
    return {
        "device": "$torch.device('cpu')", "output_dir": str(out), "classes": CLASSES,
        "autoencoder_path": str(autoencoder_path),
        "autoencoder_loaded": "$load_autoencoder(@autoencoder_path)",
        "autoencoder": "$@autoencoder_loaded[0].to(@device).eval()",
        "image_size": "$@autoencoder_loaded[1]['image_size']",
        "channels": "$@autoencoder_loaded[1]['channels']",
        "latent_channels": "$@autoencoder_loaded[1]['latent_channels']",
        "latent_size": None, "scale_factor": None,
        "datalist": cxr["datalist"],
        "latent_cache": {"_target_": "medgen.latent.LatentCache", "path": "$@output_dir + '/latents_training.pt'",
                         "autoencoder": "@autoencoder", "autoencoder_weights": "@autoencoder_path",
                         "datalist": "@datalist", "image_size": "@image_size", "channels": "@channels"},
        "network_def": UNET, "scheduler": SCHEDULER,
        "weights_meta": {"_target_": "medgen.latent.LatentWeightsMeta", "latent_cache": "@latent_cache",
                         "classes": "@classes", "image_size": "@image_size", "channels": "@channels",
                         "network": "@network_def", "scheduler": "@scheduler", "datalist": "@datalist"},
        "train": {"dataset": "$@latent_cache.dataset()"},
        "training": [
            "$medgen.latent.check_latent_training(@autoencoder_path)",
            "$medgen.latent.check_latent_training(@autoencoder_path, @autoencoder, @image_size, @network_def, "
            "@latent_size, @channels, 'train_diffusion.yaml')",
            "$@latent_cache.check_scale_factor(@scale_factor, 'train_diffusion.yaml')",
        ],
    }


def test_training_config_checks_before_loading_the_missing_autoencoder(cxr: dict, tmp_path: Path) -> None:
    parser = ConfigParser(train_config(cxr, tmp_path, tmp_path / "models" / "model_autoencoder.pt"),
                          globals=GLOBALS)
    with pytest.raises(SystemExit, match="no autoencoder weights at .*model_autoencoder.pt"):
        parser.get_parsed_content("training")


def test_train_then_sample_from_the_weights_metadata(cxr: dict, tmp_path: Path) -> None:
    parser = ConfigParser(train_config(cxr, tmp_path / "run", cxr["weights"]),
                          globals=GLOBALS)
    parser.get_parsed_content("training")
    batch = parser.get_parsed_content("train#dataset")[0]
    assert batch["image"].shape == (3, 16, 16) and int(batch["label"]) == 0
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), model)
    write_sidecar(model, parser.get_parsed_content("weights_meta").meta)
    (model.parent / "model_autoencoder.pt").write_bytes(cxr["weights"].read_bytes())

    inference = {
        "device": "$torch.device('cpu')", "ckpt_path": str(model),
        "weights_meta": "$weights.read_meta(@ckpt_path)",
        "classes": "$weights.meta_value(@weights_meta, 'classes')",
        "autoencoder_path": "$os.path.join(os.path.dirname(@ckpt_path), "
                            "weights.meta_value(@weights_meta, 'autoencoder_file'))",
        "autoencoder": "$load_autoencoder(@autoencoder_path)[0]",
        "scale_factor": "$weights.meta_value(@weights_meta, 'scale_factor')",
        "latent_channels": "$weights.meta_value(@weights_meta, 'latent_channels')",
        "image_size": "$weights.meta_value(@weights_meta, 'image_size')",
        "channels": "$weights.meta_value(@weights_meta, 'channels')",
        "network_def": UNET, "scheduler": SCHEDULER,
        "pipeline": {"_target_": "medgen.latent.LatentDiffusionPipeline", "network": "@network_def",
                     "scheduler": "@scheduler", "autoencoder": "@autoencoder", "scale_factor": "@scale_factor",
                     "classes": "@classes", "image_size": "@image_size", "in_channels": "@channels",
                     "latent_channels": "@latent_channels", "precision": "fp32"},
        "run": ["$medgen.latent.check_autoencoder_or_exit(@autoencoder_path, @ckpt_path)",
                "$@pipeline.generate([0, 1], [0, 1], 2)"],
    }
    images = ConfigParser(inference, globals=GLOBALS).get_parsed_content("run")[1]
    assert images.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)
    torch.save(tiny_autoencoder(seed=3).state_dict(), model.parent / "model_autoencoder.pt")  # another autoencoder
    with pytest.raises(SystemExit, match="is not the one the diffusion weights .*model.pt were trained on"):
        ConfigParser(inference, globals=GLOBALS).get_parsed_content("run")
