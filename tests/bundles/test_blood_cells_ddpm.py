"""The blood_cells_ddpm bundle as a user runs it (``python -m monai.bundle run ...`` from any folder) on real RGB
blood cell images: colour kept from the files to the grids and samples, a stratified three-way split from the seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgen.data.datalist import resolve_datalist

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "blood_cells_ddpm" / "configs"
CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
PER_CLASS = 8
TINY = ["--image_size", "32", "--unet_channels", "[16,32,32]", "--attention_levels", "[False,False,True]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "16"]


@pytest.fixture(scope="module")
def pbc_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real images per class of the PBC set (spread over each class's sorted files), in a folder of their own."""
    source = shared_data / "blood_cells_pbc"
    if not source.is_dir():
        pytest.skip(f"PBC blood cell images not found at {source}")
    tree = tmp_path_factory.mktemp("pbc")
    for name in CLASSES:
        files = sorted((source / name).glob("*.jpg"))
        (tree / name).mkdir()
        for f in files[:: len(files) // PER_CLASS][:PER_CLASS]:
            shutil.copy(f, tree / name / f.name)
    return tree


def monai_run(run_id: str, config: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_DATA_DIR": "/nonexistent-so-only-given-data-is-read"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config),
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(pbc_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch at 32 px with a tiny network, started from a folder that is neither the repo nor the bundle."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    runs = tmp_path_factory.mktemp("runs")
    monai_run("training", "train.yaml", "--dataset_dir", str(pbc_tree), "--runs_dir", str(runs), "--run_name", "tiny",
              "--batch_size", "8", "--max_epochs", "1", "--samples_per_class_in_grid", "2", "--num_workers", "0",
              "--tensorboard_dir", "null", *TINY, cwd=elsewhere)
    assert not any(elsewhere.iterdir())  # nothing written in the current folder
    return runs / "blood_cells_ddpm" / "tiny"


def channels_differ(path: Path) -> bool:
    with Image.open(path) as im:
        assert im.mode == "RGB", f"{path} is {im.mode}, not RGB"
        rgb = np.asarray(im).astype(int)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0 and np.abs(rgb[..., 1] - rgb[..., 2]).max() > 0)


@pytest.mark.slow
def test_the_run_datalist_has_three_stratified_splits_reproducible_from_the_seed(run_dir: Path, pbc_tree: Path):
    datalist = json.loads((run_dir / "datalist.json").read_text())
    assert datalist["classes"] == CLASSES
    counts = {split: Counter(item["label"] for item in datalist[split]) for split in ("training", "validation", "test")}
    # 8 per class: validation 0.1 -> 1, test 0.2 -> 2, training the other 5, in every class
    assert counts == {"training": Counter({k: 5 for k in range(8)}), "validation": Counter({k: 1 for k in range(8)}),
                      "test": Counter({k: 2 for k in range(8)})}
    files = [item["image"] for split in ("training", "validation", "test") for item in datalist[split]]
    assert len(files) == len(set(files)) == 8 * PER_CLASS  # each image in exactly one split
    again = resolve_datalist(pbc_tree, classes=CLASSES, seed=0, val_fraction=0.1, test_fraction=0.2, channels=3)
    other = resolve_datalist(pbc_tree, classes=CLASSES, seed=1, val_fraction=0.1, test_fraction=0.2, channels=3)
    for split in ("training", "validation", "test"):
        assert again[split] == datalist[split]
    assert other["test"] != datalist["test"]


@pytest.mark.slow
def test_training_writes_colour_grids_and_rgb_weights(run_dir: Path):
    (grid,) = (run_dir / "grids").glob("grid_epoch_*.png")
    assert channels_differ(grid)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["channels"] == 3 and meta["classes"] == CLASSES and meta["bundle"] == "blood_cells_ddpm"
    assert (run_dir / "model.pt").is_file() and (run_dir / "training_curves.png").is_file()


@pytest.mark.slow
def test_sampling_writes_rgb_pngs_from_any_folder(run_dir: Path, tmp_path: Path):
    out = tmp_path / "samples"
    monai_run("inference", "inference.yaml", "--ckpt_path", str(run_dir / "model.pt"), "--output_dir", str(out),
              "--per_class", "1", "--num_inference_steps", "3", "--batch_size", "8", cwd=tmp_path)
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["class"] for line in lines] == CLASSES
    for line in lines:
        assert channels_differ(out / line["file"])
        assert np.load(out / Path(line["file"]).with_suffix(".npy")).shape == (3, 32, 32)
    for name in CLASSES:
        assert channels_differ(out / f"grid_{name}.png")


def test_the_default_data_folder_comes_from_medgen_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from monai.bundle import ConfigParser

    monkeypatch.setenv("MEDGEN_DATA_DIR", str(tmp_path))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    assert parser.get_parsed_content("dataset_dir") == str(tmp_path / "blood_cells_pbc")
    config = parser.get()
    assert (config["channels"], config["image_size"], config["augment"]) == (3, 64, True)
    assert (config["val_fraction"], config["test_fraction"]) == (0.1, 0.2)
