"""Bad input, before any training: each a one-line error naming the keys and files."""

from __future__ import annotations

from pathlib import Path

import pytest
from latent_helpers import IMAGE_SIZE, make_cache, save_autoencoder, tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDPMScheduler

from medgen.config import check_values
from medgen.latent import (
    AutoencoderFacts,
    LatentConfigError,
    LatentDiffusionPipeline,
    check_latent_config,
    check_latent_training,
)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_diffusion_stage_before_any_autoencoder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "model_autoencoder.pt"
    with pytest.raises(SystemExit) as err:
        check_latent_training(missing)
    text = one_line(err.value)
    assert text.startswith("medgen: error: no autoencoder weights at") and str(missing) in text
    assert "'autoencoder_path'" in text and "train_autoencoder.yaml" in text


def test_image_size_not_divisible_by_the_downsampling_factor(tmp_path: Path) -> None:
    autoencoder = tiny_autoencoder()
    weights = save_autoencoder(autoencoder, tmp_path / "model_autoencoder.pt")
    with pytest.raises(SystemExit) as err:
        check_latent_training(weights, autoencoder, 33, tiny_unet(3))
    text = one_line(err.value)
    assert "config key 'image_size' 33 is not divisible by the downsampling factor 2" in text
    assert str(weights) in text and "use 32 or 34" in text


def test_latent_channels_that_do_not_match_the_diffusion_network(tmp_path: Path) -> None:
    autoencoder = tiny_autoencoder()
    weights = save_autoencoder(autoencoder, tmp_path / "model_autoencoder.pt")
    with pytest.raises(SystemExit) as err:
        check_latent_training(weights, autoencoder, IMAGE_SIZE, tiny_unet(4), config_file="train_diffusion.yaml")
    text = one_line(err.value)
    assert "'network_def#in_channels' is 4 in train_diffusion.yaml" in text
    assert f"the autoencoder {weights} makes 3-channel latents" in text
    assert check_latent_training(weights, autoencoder, IMAGE_SIZE, tiny_unet(3)).latent_channels == 3


def test_latent_size_that_does_not_match_the_config() -> None:
    facts = AutoencoderFacts.of(tiny_autoencoder(), "models/model_autoencoder.pt")
    with pytest.raises(LatentConfigError) as err:
        check_latent_config(facts, 64, 3, latent_size=16, config_file="train_diffusion.yaml")
    text = one_line(err.value)
    assert "'latent_size' is 16 in train_diffusion.yaml" in text and "models/model_autoencoder.pt" in text
    assert "into 32 latents (factor 2)" in text


def test_image_channels_that_the_autoencoder_does_not_encode() -> None:
    facts = AutoencoderFacts.of(tiny_autoencoder(channels=3), "ae.pt")
    with pytest.raises(LatentConfigError, match="'channels' is 1 .* ae.pt encodes 3-channel images"):
        check_latent_config(facts, IMAGE_SIZE, 3, channels=1)


def test_scale_factor_that_is_not_this_autoencoders(cxr: dict) -> None:
    cache = cxr["cache"]
    cache.check_scale_factor(cache.scale_factor * (1 + 1e-5))  # the same, up to rounding in a JSON file
    with pytest.raises(LatentConfigError) as err:
        cache.check_scale_factor(cache.scale_factor * 1.3, config_file="train_diffusion.yaml")
    text = one_line(err.value)
    assert "config key 'scale_factor'" in text and "train_diffusion.yaml" in text
    assert str(cache.path) in text and str(cxr["weights"]) in text


def test_cache_of_an_image_size_the_autoencoder_cannot_take(cxr: dict, tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "latents.pt", cxr["autoencoder"], cxr["weights"], cxr["datalist"])
    cache.image_size = (30, 31)
    with pytest.raises(LatentConfigError, match="'image_size' 30x31 is not divisible by the downsampling factor 2"):
        cache.load()
    assert not cache.path.exists()


def test_pipeline_refuses_a_network_of_other_latent_channels(cxr: dict) -> None:
    with pytest.raises(LatentConfigError, match="'network_def#in_channels' is 4 .* makes 3-channel latents"):
        LatentDiffusionPipeline(tiny_unet(4), DDPMScheduler(1000), cxr["autoencoder"], 1.0, ["a", "b"],
                                image_size=IMAGE_SIZE)
    with pytest.raises(LatentConfigError, match="'latent_channels' is 4 but the autoencoder's is 3"):
        LatentDiffusionPipeline(tiny_unet(3), DDPMScheduler(1000), cxr["autoencoder"], 1.0, ["a", "b"],
                                image_size=IMAGE_SIZE, latent_channels=4)


@pytest.mark.parametrize(("key", "bad", "problem"), [
    ("autoencoder_path", 3, "must be a path, or null"),
    ("latent_channels", 0, "must be a positive integer"),
    ("latent_size", 2.5, "must be a positive integer, or null"),
    ("scale_factor", -1.0, "must be a finite number > 0, or null"),
    ("autoencoder_channels", [64, 0], "must be a non-empty list of integers >= 1"),
    ("kl_weight", -1e-6, "must be a finite number >= 0"),
    ("perceptual_weight", "high", "must be a finite number >= 0"),
    ("adv_weight", float("nan"), "must be a finite number >= 0"),
    ("adv_warmup_iters", -1, "must be an integer >= 0"),
    ("grid_interval", 1.5, "must be an integer >= 0"),
])
def test_bad_latent_and_autoencoder_keys_stop_the_config_check(key: str, bad: object, problem: str) -> None:
    with pytest.raises(SystemExit) as err:
        check_values({key: bad})
    assert one_line(err.value) == f"medgen: error: config key '{key}' {problem}, got {bad!r}"


def test_good_latent_and_autoencoder_keys_pass_the_config_check() -> None:
    check_values({"autoencoder_path": "models/model_autoencoder.pt", "latent_channels": 3, "latent_size": None,
                  "scale_factor": None, "autoencoder_channels": [64, 128, 128], "kl_weight": 1e-6,
                  "perceptual_weight": 0, "adv_weight": 0.01, "adv_warmup_iters": 0, "grid_interval": 1})
    check_values({"autoencoder_path": None, "latent_size": 64, "scale_factor": 0.87})
