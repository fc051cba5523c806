"""Run folders and the resume check, without training: folder names, the refusal of other data, setting aside."""

from __future__ import annotations

import json

import pytest
import torch

from medgen.engine.runs import check_resume, keep_datalist, run_dir, set_aside_checkpoints
from medgen.networks.weights_meta import META_KEY, WeightsMeta


def meta_for(datalist: dict, size: int = 32) -> WeightsMeta:
    from monai.networks.schedulers import DDPMScheduler

    from medgen.networks import ConditionalDiffusionUNet

    net = ConditionalDiffusionUNet(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8)
    return WeightsMeta(datalist["classes"], size, 1, net, DDPMScheduler(1000), datalist)


DATA = {"classes": ["NORMAL", "PNEUMONIA"], "training": [{"image": "/d/a.jpeg", "label": 0},
                                                         {"image": "/d/b.jpeg", "label": 1}]}
OTHER = {"classes": ["no", "yes"], "training": [{"image": "/e/c.jpeg", "label": 0}, {"image": "/e/d.jpeg", "label": 1}]}


def test_every_unnamed_run_gets_a_new_folder_and_a_named_one_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    first, second = run_dir(tmp_path, "cxr_ddpm"), run_dir(tmp_path, "cxr_ddpm")
    assert first != second and all(p.startswith(str(tmp_path / "cxr_ddpm")) for p in (first, second))
    assert run_dir(tmp_path, "cxr_ddpm", "baseline") == str(tmp_path / "cxr_ddpm" / "baseline")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDGEN_RUNS_DIR", raising=False)
    assert run_dir(None, "cxr_ddpm", "x") == str(tmp_path / "runs" / "cxr_ddpm" / "x")  # ./runs by default
    with pytest.raises(SystemExit, match="plain folder name"):
        run_dir(tmp_path, "cxr_ddpm", "../escape")


def test_processes_of_one_torchrun_job_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_dir(tmp_path, "b") == run_dir(tmp_path, "b") == str(tmp_path / "b" / "ddp-abc")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(SystemExit, match="--run-name"):
        run_dir(tmp_path, "b")


def test_resume_takes_only_a_checkpoint_of_the_same_data_and_model(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    mine = meta_for(DATA)
    torch.save({"model": {}, META_KEY: mine.state_dict()}, ckpt_dir / "checkpoint_epoch=1.pt")
    assert check_resume(ckpt_dir, mine) == ckpt_dir / "checkpoint_epoch=1.pt"
    assert check_resume(ckpt_dir, mine, enabled=False) is None
    with pytest.raises(SystemExit) as err:
        check_resume(ckpt_dir, meta_for(DATA, size=64))
    assert "image_size 32 (checkpoint) vs 64 (this run)" in str(err.value) and "--resume false" in str(err.value)

    # other data: refused before the run folder's datalist.json is touched
    keep_datalist(DATA, tmp_path, ckpt_dir)
    before = (tmp_path / "datalist.json").read_text()
    with pytest.raises(SystemExit, match=r"other data: classes \[\"NORMAL\", \"PNEUMONIA\"\] \(checkpoint\)"):
        keep_datalist(OTHER, tmp_path, ckpt_dir)
    assert (tmp_path / "datalist.json").read_text() == before
    keep_datalist(OTHER, tmp_path, ckpt_dir, resume=False)
    assert json.loads((tmp_path / "datalist.json").read_text())["classes"] == ["no", "yes"]


def test_a_checkpoint_without_a_fingerprint_is_not_resumed_silently(tmp_path):
    torch.save({"model": {}}, tmp_path / "checkpoint_epoch=3.pt")
    with pytest.raises(SystemExit, match="records no training-data fingerprint"):
        check_resume(tmp_path, meta_for(DATA))


def test_a_fresh_start_sets_earlier_checkpoints_aside(tmp_path):
    torch.save({"model": {}}, tmp_path / "checkpoint_epoch=3.pt")
    moved = set_aside_checkpoints(tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (moved / "checkpoint_epoch=3.pt").is_file()
    assert set_aside_checkpoints(tmp_path) is None
