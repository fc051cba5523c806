"""Runs never mix and weights describe themselves: ``medgen train`` / ``sample`` as a user runs them, on real chest
X-rays (tiny network, 32 px, 4 images per class, 1-2 epochs)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "cxr_ddpm"
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,True]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "8",
        "--max_items_per_class", "4", "--batch_size", "4", "--max_epochs", "1", "--num_workers", "0",
        "--checkpoint_interval", "1", "--samples_per_class_in_grid", "1"]

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def medgen(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``medgen ARGS`` in ``cwd``, with no run folder base set (so ``./runs`` is the default)."""
    env = {k: v for k, v in os.environ.items() if k != "MEDGEN_RUNS_DIR"}
    proc = subprocess.run([sys.executable, "-m", "medgen.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("medgen: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def run_folders(work: Path) -> list[Path]:
    return sorted(p for p in (work / "runs" / "cxr_ddpm").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def noyes(kermany: Path, tmp_path_factory) -> Path:
    """A user's own no/yes data set: other real chest X-rays under other class names."""
    root = tmp_path_factory.mktemp("noyes")
    for name, source in (("no", "NORMAL"), ("yes", "PNEUMONIA")):
        (root / name).mkdir()
        for src in sorted((kermany / "train" / source).glob("*.jpeg"))[20:24]:
            (root / name / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="module")
def runs(kermany: Path, noyes: Path, tmp_path_factory) -> dict:
    """Two trainings with the default output: the bundle's data set in the repo's bundle, then a no/yes data set
    in a copy of the bundle with --export-to-bundle."""
    work = tmp_path_factory.mktemp("work")
    bundle_copy = work / "bundles" / "cxr_ddpm"
    shutil.copytree(BUNDLE, bundle_copy, ignore=shutil.ignore_patterns("runs"))
    shipped = {p.name: sha256(p) for p in (BUNDLE / "models").iterdir() if p.is_file()}

    first = medgen(work, "train", str(BUNDLE), "--dataset-dir", str(kermany), *TINY)
    (kermany_run,) = run_folders(work)
    second = medgen(work, "train", str(bundle_copy), "--export-to-bundle", "--dataset-dir", str(noyes),
                    "--classes", '["no", "yes"]', *TINY)
    noyes_run = next(p for p in run_folders(work) if p != kermany_run)
    return {"work": work, "kermany": kermany_run, "noyes": noyes_run, "bundle_copy": bundle_copy,
            "shipped": shipped, "logs": (first.stderr + first.stdout, second.stderr + second.stdout)}


def test_two_default_trainings_get_two_run_folders_and_leave_the_bundle_alone(runs):
    assert len(run_folders(runs["work"])) == 2
    for run, classes in ((runs["kermany"], ["NORMAL", "PNEUMONIA"]), (runs["noyes"], ["no", "yes"])):
        assert run.parent == runs["work"] / "runs" / "cxr_ddpm"
        record = json.loads((run / "run.json").read_text())
        assert record["fingerprint"]["classes"] == classes and record["fingerprint"]["image_size"] == 32
        assert record["medgen_version"] and record["started"] and len(record["fingerprint"]["datalist_sha256"]) == 64
        assert json.loads((run / "model.json").read_text())["classes"] == classes
        assert (run / "checkpoints" / "checkpoint_final.pt").is_file()
        assert json.loads((run / "datalist.json").read_text())["classes"] == classes
    assert f"weights written to {runs['kermany'] / 'model.pt'}" in runs["logs"][0]
    # the repo's bundle: shipped weights and their metadata untouched
    assert {p.name: sha256(p) for p in (BUNDLE / "models").iterdir() if p.is_file()} == runs["shipped"]
    assert not (BUNDLE / "runs").exists() or not any((BUNDLE / "runs").rglob("run.json"))


def test_export_to_bundle_writes_the_bundles_weights_with_their_metadata(runs):
    exported = runs["bundle_copy"] / "models" / "model.pt"
    assert sha256(exported) != runs["shipped"]["model.pt"]
    assert sha256(exported) == sha256(runs["noyes"] / "model.pt")
    meta = json.loads((runs["bundle_copy"] / "models" / "model.json").read_text())
    assert meta["classes"] == ["no", "yes"] and meta["image_size"] == 32 and meta["weights_sha256"] == sha256(exported)
    assert "weights exported to the bundle" in runs["logs"][1]


def test_checkpoints_carry_the_record(runs):
    ckpt = torch.load(runs["noyes"] / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    meta = ckpt["medgen_meta"]
    assert meta["classes"] == ["no", "yes"] and meta["image_size"] == 32 and meta["channels"] == 1
    assert meta["network"]["channels"] == [8, 16] and meta["scheduler"]["num_train_timesteps"] == 1000
    assert meta["datalist_sha256"] == json.loads((runs["noyes"] / "run.json").read_text())["fingerprint"][
        "datalist_sha256"]


def test_sample_with_only_the_weights_reproduces_classes_and_size(runs, tmp_path):
    for ckpt in (runs["noyes"] / "model.pt", runs["noyes"] / "checkpoints" / "checkpoint_final.pt"):
        out = tmp_path / ckpt.stem
        medgen(runs["work"], "sample", "cxr_ddpm", "--ckpt", str(ckpt), "--per-class", "1", "--steps", "2",
               "--out", str(out))
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["no", "yes"]
        for png in out.glob("*/*.png"):
            assert Image.open(png).size == (32, 32)
    # the exported bundle samples no/yes at 32 px without --ckpt either
    out = tmp_path / "bundle"
    medgen(runs["work"], "sample", str(runs["bundle_copy"]), "--per-class", "1", "--steps", "2", "--out", str(out))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["no", "yes"]
    assert np.asarray(Image.open(next(out.glob("yes/*.png")))).shape == (32, 32)


def test_an_override_that_contradicts_the_weights_is_one_line(runs, tmp_path):
    ckpt = str(runs["noyes"] / "model.pt")
    for args, expected in ((["--image_size", "64"], "image_size 32 (weights) vs 64 (config)"),
                           (["--classes", "[NORMAL,PNEUMONIA]"], 'classes ["no", "yes"] (weights)'),
                           (["--unet_channels", "[8,32]"], "network channels [8, 16] (weights) vs [8, 32] (config)")):
        proc = medgen(runs["work"], "sample", "cxr_ddpm", "--ckpt", ckpt, "--per-class", "1", "--steps", "2",
                      "--out", str(tmp_path / "x"), *args, ok=False)
        assert expected in one_line_error(proc)
    assert not list((tmp_path / "x").glob("*/*.png"))


def test_serving_reads_classes_and_size_from_the_weights(runs):
    from medgen.serve.catalog import read_bundle
    from medgen.serve.settings import BundleSpec

    info = read_bundle(BundleSpec("cxr_ddpm", BUNDLE, ckpt=runs["noyes"] / "model.pt"))
    assert info.classes == ["no", "yes"] and info.image_size == [32, 32]


def test_resume_refuses_other_data_classes_or_size_and_continues_the_same(runs, noyes, kermany):
    run = runs["kermany"]
    datalist_before = sha256(run / "datalist.json")
    other_data = medgen(runs["work"], "train", "cxr_ddpm", "--output_dir", str(run), "--dataset-dir", str(noyes),
                        "--classes", '["no", "yes"]', *TINY, ok=False)
    line = one_line_error(other_data)
    assert "cannot resume" in line and "classes" in line and "--resume false" in line and "--run-name" in line
    other_size = medgen(runs["work"], "train", "cxr_ddpm", "--output_dir", str(run), "--dataset-dir", str(kermany),
                        *TINY, "--image_size", "16", ok=False)
    assert "image_size 32 (checkpoint) vs 16 (this run)" in one_line_error(other_size)
    assert sha256(run / "datalist.json") == datalist_before  # a refused run overwrites nothing

    same = medgen(runs["work"], "train", "cxr_ddpm", "--output_dir", str(run), "--dataset-dir", str(kermany),
                  *TINY, "--max_epochs", "2")
    log = same.stderr + same.stdout
    assert f"resumed from {run / 'checkpoints'}" in log and "at epoch 1" in log
    ckpt = torch.load(run / "checkpoints" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 * 2  # 8 images, batch 4, 2 epochs: one of them resumed
    assert json.loads((run / "run.json").read_text())["resumed_from"].endswith(".pt")

    # --resume false starts fresh in the same folder: the other run's checkpoints are moved aside, not resumed
    medgen(runs["work"], "train", "cxr_ddpm", "--output_dir", str(run), "--dataset-dir", str(noyes),
           "--classes", '["no", "yes"]', *TINY, "--resume", "false")
    assert list(run.glob("checkpoints/replaced-*/checkpoint_epoch=2.pt"))
    ckpt = torch.load(run / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ckpt["medgen_meta"]["classes"] == ["no", "yes"] and ckpt["trainer"]["iteration"] == 2
