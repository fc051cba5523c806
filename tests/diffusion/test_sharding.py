"""Sharded generation: n shards written to n folders together make exactly the unsharded job, image for image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen.cli import main as medgen_main
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.diffusion.sample_run import SampleRunner
from medgen.networks import ConditionalDiffusionUNet

CLASSES = ["NORMAL", "PNEUMONIA"]


def tiny_pipeline(batch_size: int) -> DiffusionPipeline:
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(
        channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8
    )
    return DiffusionPipeline(
        net, DDPMScheduler(num_train_timesteps=1000), CLASSES, image_size=16, precision="fp32", batch_size=batch_size
    )


def records(folder: Path) -> dict[tuple[int, int], dict]:
    lines = (folder / "samples.jsonl").read_text().splitlines()
    out = {}
    for line in lines:
        rec = json.loads(line)
        key = (rec["label"], rec["seed"])
        assert key not in out, f"seed {key} written twice in {folder}"
        out[key] = rec
    return out


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_two_shards_merge_into_the_unsharded_job(tmp_path: Path, sampler: str) -> None:
    settings = {"per_class": 5, "seed": 100, "sampler": sampler, "num_inference_steps": 3, "save_npy": True}
    SampleRunner(tiny_pipeline(4), tmp_path / "whole", **settings).run()
    for i in range(2):
        SampleRunner(tiny_pipeline(3), tmp_path / f"shard{i}", shard=f"{i}/2", **settings).run()

    whole = records(tmp_path / "whole")
    shards = [records(tmp_path / f"shard{i}") for i in range(2)]
    assert not set(shards[0]) & set(shards[1]), "a seed was made by both shards"
    assert set(shards[0]) | set(shards[1]) == set(whole)
    assert len(whole) == 10 and len({seed for _, seed in whole}) == 10
    for shard, part in enumerate(shards):
        for key, rec in part.items():
            mine = np.load(tmp_path / f"shard{shard}" / Path(rec["file"]).with_suffix(".npy"))
            reference = np.load(tmp_path / "whole" / Path(whole[key]["file"]).with_suffix(".npy"))
            np.testing.assert_allclose(mine, reference, atol=1e-5)


def test_a_rerun_of_a_shard_makes_nothing_twice(tmp_path: Path) -> None:
    runner = SampleRunner(tiny_pipeline(2), tmp_path, per_class=2, seed=0, num_inference_steps=2, shard="1/2")
    runner.run()
    runner.run()
    assert len(records(tmp_path)) == 2


@pytest.mark.slow
def test_medgen_sample_shard_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``medgen sample --shard i/n`` through the bundle's inference.yaml, with random weights at 32x32."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(num_classes=2)  # the bundle's network_def
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    common = [
        "sample",
        "cxr_ddpm",
        "--ckpt",
        str(ckpt),
        "--per-class",
        "2",
        "--steps",
        "2",
        "--sampler",
        "dpmpp2m",
        "--batch-size",
        "2",
        "--image_size",
        "32",
        "--precision",
        "fp32",
    ]
    assert medgen_main([*common, "--out", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert medgen_main([*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    whole = records(tmp_path / "whole")
    parts = [records(tmp_path / f"s{i}") for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2
    assert set(parts[0]) | set(parts[1]) == set(whole) and not set(parts[0]) & set(parts[1])
    for i, part in enumerate(parts):
        for key, rec in part.items():
            np.testing.assert_allclose(
                np.load(tmp_path / f"s{i}" / Path(rec["file"]).with_suffix(".npy")),
                np.load(tmp_path / "whole" / Path(whole[key]["file"]).with_suffix(".npy")),
                atol=1e-5,
            )
