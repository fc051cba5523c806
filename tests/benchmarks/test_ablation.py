"""benchmarks.ablation: every variant of a bundle's study trains the same compute with its own recipe, and is scored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.ablation import STUDIES, main, train_flops_per_image


@pytest.fixture(scope="module")
def tiny_brain(shared_data: Path, tmp_path_factory) -> Path:
    """The brain set's layout (Training/Testing per source class) with a few real slices each, linked, not copied."""
    root = tmp_path_factory.mktemp("tiny_brain")
    for split, n in (("Training", 12), ("Testing", 3)):
        for cls in ("glioma", "meningioma", "notumor", "pituitary"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((shared_data / "brain_tumor_mri_224" / split / cls).glob("*.jpg"))[:n]:
                os.symlink(src, root / split / cls / src.name)
    return root


def test_a_bundle_s_flops_come_from_its_own_network_definition():
    """The score network counts like the bundle builds it: 4x the pixels, about 4x the FLOPs; wider, more."""
    study = STUDIES["brain_mri_score"]
    small = train_flops_per_image({**study.fixed(16), **study.base}, 16, "brain_mri_score")
    large = train_flops_per_image({**study.fixed(32), **study.base}, 32, "brain_mri_score")
    wide = train_flops_per_image({**study.fixed(16), **study.base, "unet_channels": [32, 64, 128, 128]}, 16,
                                 "brain_mri_score")
    assert 3.5 < large / small < 4.5 and wide > 3 * small


def test_unknown_variant_of_a_bundle_is_refused_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown brain_mri_score variant\(s\) \['v_pred'\]; choose from"):
        main(["--bundle", "brain_mri_score", "--variants", "v_pred", "--out-dir", str(tmp_path)])


@pytest.mark.slow
def test_brain_variants_train_equal_compute_with_their_own_noise_levels_and_are_scored(tiny_brain, tmp_path, capsys):
    study = STUDIES["brain_mri_score"]
    per_image = train_flops_per_image({**study.fixed(16), **study.base}, 16, "brain_mri_score")
    budget = 2 * per_image * 16 / 1e9  # two iterations of batch 16
    out = tmp_path / "results.json"
    assert main(["--bundle", "brain_mri_score", "--variants", "uniform", "lognormal", "--budget-gflop", str(budget),
                 "--image-size", "16", "--per-class", "2", "--max-items-per-class", "0", "--dataset-dir",
                 str(tiny_brain), "--out-dir", str(tmp_path / "ablation"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["bundle"] == "brain_mri_score" and set(result["variants"]) == {"uniform", "lognormal"}
    for name, sampling in (("uniform", "uniform"), ("lognormal", "lognormal")):
        variant = result["variants"][name]
        run = tmp_path / "ablation" / name / "run"
        # the run trained what the row says: its weights record the variant's noise levels, at the budget's iterations
        assert json.loads((run / "model.json").read_text())["config"]["timestep_sampling"] == sampling
        ckpt = torch.load(run / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
        assert ckpt["trainer"]["iteration"] == variant["iterations"] == 2
        assert set(variant["classes"]) == {"notumor", "tumor"} and variant["overall"]["fid_ratio"] > 0
        assert name in printed
