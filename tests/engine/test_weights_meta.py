"""Self-describing weights without training: the metadata records, sidecars, checkpoints and the shipped model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from medgen.networks import ConditionalDiffusionUNet
from medgen.networks.weights_meta import (
    META_KEY,
    WeightsMeta,
    check_against,
    datalist_fingerprint,
    differences,
    fingerprint,
    meta_value,
    read_meta,
    write_sidecar,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt"


def tiny_net(num_classes: int = 2) -> ConditionalDiffusionUNet:
    return ConditionalDiffusionUNet(num_classes=num_classes, channels=(8, 16), attention_levels=(False, False),
                                    num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


def tiny_meta(classes=("no", "yes"), size=32, images=("a.png", "b.png")) -> WeightsMeta:
    from monai.networks.schedulers import DDPMScheduler

    datalist = {"classes": list(classes), "training": [{"image": p, "label": i % 2} for i, p in enumerate(images)]}
    return WeightsMeta(classes, size, 1, tiny_net(len(classes)), DDPMScheduler(1000), datalist,
                       config={"unet_channels": [8, 16]}, bundle="cxr_ddpm")


def test_the_record_holds_classes_size_network_scheduler_and_data_fingerprint():
    meta = tiny_meta().meta
    assert meta["classes"] == ["no", "yes"] and meta["image_size"] == 32 and meta["channels"] == 1
    assert meta["network"]["_target_"].endswith("ConditionalDiffusionUNet") and meta["network"]["channels"] == [8, 16]
    assert meta["scheduler"]["num_train_timesteps"] == 1000 and meta["prediction_type"] == "epsilon"
    assert len(meta["datalist_sha256"]) == 64 and meta["medgen_version"]
    assert meta_value(meta, "unet_channels") == [8, 16] and meta_value(meta, "network.num_head_channels") == 8
    assert meta_value(None, "image_size", 64) == 64 and meta_value(meta, "missing", "d") == "d"
    json.dumps(meta)  # JSON types only


def test_the_data_fingerprint_sees_items_labels_and_classes_but_not_their_order():
    a = {"classes": ["no", "yes"], "training": [{"image": "x", "label": 0}, {"image": "y", "label": 1}]}
    assert datalist_fingerprint(a) == datalist_fingerprint({**a, "training": a["training"][::-1]})
    assert datalist_fingerprint(a) != datalist_fingerprint({**a, "classes": ["yes", "no"]})
    assert datalist_fingerprint(a) != datalist_fingerprint({**a, "training": [{"image": "x", "label": 1},
                                                                           {"image": "y", "label": 1}]})
    diffs = differences(fingerprint(tiny_meta().meta), fingerprint(tiny_meta(("a", "b"), 64).meta))
    assert any(d.startswith("classes") for d in diffs) and any(d.startswith("image_size 32") for d in diffs)
    assert "training data (datalist hash)" in diffs


def test_a_sidecar_describes_only_the_weights_it_was_written_for(tmp_path, caplog):
    weights = tmp_path / "model.pt"
    torch.save(tiny_net().state_dict(), weights)
    write_sidecar(weights, tiny_meta().meta)
    assert read_meta(weights)["classes"] == ["no", "yes"]
    assert torch.load(weights, weights_only=True).keys() == tiny_net().state_dict().keys()  # still a plain state dict
    torch.save({k: v + 1 for k, v in tiny_net().state_dict().items()}, weights)  # other weights, stale sidecar
    assert read_meta(weights) is None
    assert "describes other weights" in caplog.text


def test_a_checkpoint_carries_its_record_inside(tmp_path):
    ckpt = tmp_path / "checkpoint_epoch=1.pt"
    meta = tiny_meta()
    torch.save({"model": tiny_net().state_dict(), META_KEY: meta.state_dict()}, ckpt)
    assert read_meta(ckpt) == meta.meta
    assert torch.load(ckpt, weights_only=True)[META_KEY]["image_size"] == 32


def test_a_conflicting_value_is_one_line(tmp_path):
    meta = tiny_meta().meta
    check_against(meta, {"classes": ["no", "yes"], "image_size": 32}, "w.pt", tiny_net())
    with pytest.raises(SystemExit, match=r"image_size 32 \(weights\) vs 64 \(config\)") as err:
        check_against(meta, {"classes": ["no", "yes"], "image_size": 64}, "w.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match=r"network channels \[8, 16\] \(weights\) vs \[8, 32\]"):
        net = ConditionalDiffusionUNet(channels=(8, 32), attention_levels=(False, False), num_res_blocks=1,
                                       num_head_channels=8, norm_num_groups=8)
        check_against(meta, {}, "w.pt", net)
    check_against(None, {"image_size": 64}, "w.pt")  # weights without metadata: the config stands


def test_the_shipped_weights_describe_themselves_and_keep_their_published_hash():
    if not SHIPPED.is_file():
        pytest.skip("no shipped weights")
    sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    meta = read_meta(SHIPPED)
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"] and meta["image_size"] == 64 and meta["channels"] == 1
    assert meta["weights_sha256"] == sha and meta["network"]["channels"] == [32, 64, 128, 128]

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "cxr_ddpm" / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(SHIPPED.parents[1]), "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("classes") == ["NORMAL", "PNEUMONIA"]
    assert parser.get_parsed_content("image_size") == 64
    network = parser.get_parsed_content("network")  # loads strictly, checked against the metadata
    assert isinstance(network, ConditionalDiffusionUNet)
