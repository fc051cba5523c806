"""The latent cache: encoded once, reused while the autoencoder and data are the same, re-encoded when not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from latent_helpers import IMAGE_SIZE, cxr_datalist, make_cache, save_autoencoder, tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDPMScheduler
from PIL import Image

from medgen.diffusion.sample_run import SampleRunner
from medgen.latent import LatentCache, LatentDiffusionPipeline


def test_the_split_is_encoded_once_and_the_file_reused(cxr: dict, caplog: pytest.LogCaptureFixture) -> None:
    first: LatentCache = cxr["cache"]
    assert first.encoded and first.path.is_file()
    stamp = first.path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medgen.latent.cache"):
        again = make_cache(first.path, cxr["autoencoder"], cxr["weights"], cxr["datalist"])
        assert again.scale_factor == first.scale_factor
    assert not again.encoded and first.path.stat().st_mtime_ns == stamp
    assert "reusing 6 latents" in caplog.text
    torch.testing.assert_close(again.load()["z_mu"], first.load()["z_mu"])


def test_the_cache_records_what_the_latents_came_from(cxr: dict) -> None:
    cache: LatentCache = cxr["cache"]
    meta = cache.meta
    assert cache.latent_shape == (3, IMAGE_SIZE // 2, IMAGE_SIZE // 2)  # 3 latent channels, factor 2
    assert cache.labels.tolist() == [0, 0, 0, 1, 1, 1]
    source = meta["source"]
    assert source["autoencoder_sha256"] == cache.autoencoder_sha256 and len(source["autoencoder_sha256"]) == 64
    assert source["image_size"] == [IMAGE_SIZE, IMAGE_SIZE] and source["channels"] == 1
    assert len(source["datalist_sha256"]) == 64
    assert meta["autoencoder_file"] == "model_autoencoder.pt"
    assert "first 6 images of the training split" in meta["scale_factor_rule"]


def test_changed_data_or_autoencoder_is_encoded_again(cxr: dict, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latents.pt"
    make_cache(path, cxr["autoencoder"], cxr["weights"], cxr["datalist"]).load()
    fewer = {**cxr["datalist"], "training": cxr["datalist"]["training"][1:]}
    with caplog.at_level(logging.INFO, logger="medgen.latent.cache"):
        changed = make_cache(path, cxr["autoencoder"], cxr["weights"], fewer)
        assert len(changed) == 5 and changed.encoded
    assert "encoding the training split (changed: training data (datalist hash))" in caplog.text

    other = tiny_autoencoder(seed=1)
    other_weights = save_autoencoder(other, tmp_path / "other" / "model_autoencoder.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgen.latent.cache"):
        recoded = make_cache(path, other, other_weights, fewer)
        assert recoded.scale_factor != changed.scale_factor and recoded.encoded
    assert "changed: autoencoder_sha256" in caplog.text


def test_a_damaged_cache_file_is_encoded_again(cxr: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latents.pt"
    path.write_bytes(cxr["cache"].path.read_bytes()[:300])
    with caplog.at_level(logging.INFO, logger="medgen.latent.cache"):
        cache = make_cache(path, cxr["autoencoder"], cxr["weights"], cxr["datalist"])
        assert len(cache) == 6 and cache.encoded
    assert "the file cannot be read" in caplog.text


def test_scaled_latents_have_unit_variance(cxr: dict) -> None:
    cache: LatentCache = cxr["cache"]
    data = cache.load()
    torch.manual_seed(0)
    z = data["z_mu"].float() + data["z_sigma"].float() * torch.randn(data["z_mu"].shape)
    assert cache.scale_factor == pytest.approx(1.0 / z.std().item(), rel=0.05)  # MONAI's rule
    batch = torch.stack([item["image"] for item in cache.dataset()])
    assert batch.shape == (6, *cache.latent_shape) and batch.dtype == torch.float32
    assert batch.std().item() == pytest.approx(1.0, abs=0.1)
    means = torch.stack([item["image"] for item in cache.dataset(sample_posterior=False)])
    torch.testing.assert_close(means, data["z_mu"].float() * cache.scale_factor)


def test_an_unreadable_image_is_left_out_and_recorded(cxr: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not a jpeg at all")
    datalist = {**cxr["datalist"], "training": [*cxr["datalist"]["training"], {"image": str(broken), "label": 1}]}
    cache = make_cache(tmp_path / "latents.pt", cxr["autoencoder"], cxr["weights"], datalist)
    assert len(cache) == 6 and cache.meta["dropped"] == [str(broken)]


def test_rgb_blood_cells_encode_to_three_channel_inputs(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "blood_cells_pbc"
    classes = ["basophil", "platelet"]
    items = [{"image": str(p), "label": i} for i, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))[:2]]
    autoencoder = tiny_autoencoder(0, channels=3)
    weights = save_autoencoder(autoencoder, tmp_path / "ae.pt")
    cache = LatentCache(tmp_path / "latents.pt", autoencoder, {"classes": classes, "training": items}, IMAGE_SIZE,
                        channels=3, autoencoder_weights=weights)
    assert len(cache) == 4 and cache.latent_shape == (3, 16, 16)
    assert cache.meta["source"]["channels"] == 3
    pipe = LatentDiffusionPipeline(tiny_unet(3), DDPMScheduler(1000), autoencoder, cache.scale_factor, classes,
                                   image_size=IMAGE_SIZE, precision="fp32")
    assert pipe.in_channels == 3
    SampleRunner(pipe, tmp_path / "samples", per_class=1, sampler="dpmpp2m", num_inference_steps=2).run()
    with Image.open(tmp_path / "samples" / "platelet" / "000001.png") as im:
        assert im.mode == "RGB" and im.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_cxr_datalist_helper_reads_real_files(kermany: Path) -> None:
    assert all(Path(it["image"]).is_file() for it in cxr_datalist(kermany)["training"])
