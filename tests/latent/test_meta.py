"""What latent diffusion weights record, and the refusal of an autoencoder they were not trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from latent_helpers import CLASSES, IMAGE_SIZE, save_autoencoder, tiny_autoencoder, tiny_unet
from monai.networks.schedulers import DDPMScheduler

from medgen.engine.runs import check_resume
from medgen.latent import (
    LATENT_KEYS,
    LatentConfigError,
    LatentWeightsMeta,
    check_autoencoder_file,
    check_autoencoder_or_exit,
    require_autoencoder_weights,
)
from medgen.networks.weights_meta import (
    META_KEY,
    WeightsMeta,
    fingerprint,
    meta_value,
    read_meta,
    sha256_of,
    write_sidecar,
)


def diffusion_weights(cxr: dict, folder: Path) -> tuple[Path, LatentWeightsMeta]:
    network = tiny_unet(3)
    meta = LatentWeightsMeta(CLASSES, IMAGE_SIZE, 1, network, DDPMScheduler(1000), cxr["cache"],
                             datalist=cxr["datalist"], config={"prediction_type": "epsilon"}, bundle="cxr_ldm")
    path = folder / "model.pt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    write_sidecar(path, meta.meta)
    return path, meta


def test_weights_record_what_sampling_needs(cxr: dict, tmp_path: Path) -> None:
    path, _ = diffusion_weights(cxr, tmp_path)
    meta = read_meta(path)
    assert set(LATENT_KEYS) <= set(meta["config"])
    assert meta_value(meta, "route") == "latent"
    assert meta_value(meta, "autoencoder_file") == "model_autoencoder.pt"
    assert meta_value(meta, "autoencoder_sha256") == sha256_of(cxr["weights"])
    assert meta_value(meta, "scale_factor") == pytest.approx(cxr["cache"].scale_factor)
    assert meta_value(meta, "latent_shape") == [3, 16, 16] and meta_value(meta, "downsampling_factor") == 2
    assert (meta["image_size"], meta["channels"]) == (IMAGE_SIZE, 1)  # the pixel images, as evaluation reads them
    assert meta["network"]["in_channels"] == 3


def test_the_recorded_autoencoder_is_accepted_and_another_refused(cxr: dict, tmp_path: Path) -> None:
    path, _ = diffusion_weights(cxr, tmp_path / "run")
    meta = read_meta(path)
    assert check_autoencoder_file(cxr["weights"], meta, path) == cxr["weights"]
    other = save_autoencoder(tiny_autoencoder(seed=2), tmp_path / "other" / "model_autoencoder.pt")
    with pytest.raises(LatentConfigError) as err:
        check_autoencoder_file(other, meta, path)
    text = str(err.value)
    assert "\n" not in text and str(other) in text and str(path) in text and "model_autoencoder.pt" in text
    with pytest.raises(SystemExit, match=r"^medgen: error: the autoencoder .* is not the one the diffusion weights"):
        check_autoencoder_or_exit(other, path)
    with pytest.raises(SystemExit, match="no autoencoder weights at .*: sampling cannot start"):
        check_autoencoder_or_exit(tmp_path / "nothing.pt", path)


def test_a_missing_autoencoder_in_a_bundle_names_that_bundles_training_config(tmp_path: Path) -> None:
    bundle = tmp_path / "my_ldm"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train_autoencoder.yaml").write_text("{}\n")
    with pytest.raises(LatentConfigError) as err:
        require_autoencoder_weights(bundle / "models" / "model_autoencoder.pt")
    assert f"--config_file {bundle / 'configs' / 'train_autoencoder.yaml'}" in str(err.value)


def test_resume_refuses_a_checkpoint_of_other_latents(cxr: dict, tmp_path: Path) -> None:
    _, meta = diffusion_weights(cxr, tmp_path / "run")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir()
    torch.save({"model": {}, META_KEY: meta.state_dict()}, ckpt_dir / "checkpoint_epoch=1.pt")
    assert check_resume(ckpt_dir, meta) == ckpt_dir / "checkpoint_epoch=1.pt"  # same latents: resumes
    for key, value in (("scale_factor", 0.5), ("autoencoder_sha256", "0" * 64), ("latent_shape", [3, 8, 8])):
        other = {**meta.meta, "config": {**meta.meta["config"], key: value}}
        with pytest.raises(SystemExit, match=rf"^medgen: error: cannot resume: checkpoint .* is of another run: "
                                             rf"{key} .* \(checkpoint\) vs .* \(this run\); start fresh"):
            check_resume(ckpt_dir, other)
    assert {"autoencoder_sha256", "scale_factor", "latent_shape"} <= set(fingerprint(meta.meta))


def test_pixel_weights_keep_their_fingerprint() -> None:
    meta = WeightsMeta(CLASSES, IMAGE_SIZE, 1, tiny_unet(1), DDPMScheduler(1000), config={"prediction_type": "epsilon"})
    assert set(fingerprint(meta.meta)) == {"datalist_sha256", "classes", "image_size", "channels", "network",
                                           "scheduler", "preprocessing"}
