"""A corpus of 300+ malformed and unusual files (see ``malformed_corpus.py``), mixed with real chest X-rays, goes
through index -> load -> train -> sample -> export: 0 crashes, 0 silently wrong images. Every file is either kept
and loads to a finite, non-constant image of the right shape, or is skipped with the reason its kind calls for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from malformed_corpus import CLASSES, EXPECTED, build_corpus, kind_of
from PIL import Image, ImageOps

from medgen.cli import main
from medgen.data.datalist import build_datalist
from medgen.data.dataset import SkipFailedCacheDataset
from medgen.data.dicom import read_dicom_image
from medgen.data.loaders import LoadMedicalImage
from medgen.data.transforms import diffusion_transforms

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("training", "validation", "test")
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,False]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "8"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PIL_KINDS = {"real", "palette", "greyalpha", "rgba", "cmyk", "exif", "wide", "tall", "pngasjpg", "jpgaspng"}
TIMEOUT = 900  # a training subprocess on a busy 2-core machine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, kermany) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("corpus") / "cxr"
    return root, build_corpus(root, kermany, real_per_class=30)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _kept_images(datalist: dict) -> list[dict]:
    return [it for split in SPLITS for it in datalist[split]]


def test_index_keeps_or_skips_every_file_with_its_reason(corpus, tmp_path, capsys):
    root, counts = corpus
    files = _files(root)
    assert len(files) == sum(counts.values()) >= 300
    datalist, summary = build_datalist(root)
    kept_paths = {it["image"] for it in _kept_images(datalist)}
    wrong = []
    for path in files:
        expected, got = EXPECTED[kind_of(path)], summary.reasons.get(str(path))
        if expected is None and (got is not None or str(path.resolve()) not in kept_paths):
            wrong.append(f"{path.name}: expected kept, got {got}")
        elif expected is not None and got != expected:
            wrong.append(f"{path.name}: expected '{expected}', got {got}")
    assert not wrong, wrong
    expected_skips = Counter(EXPECTED[kind_of(p)] for p in files if EXPECTED[kind_of(p)] is not None)
    assert summary.skipped == expected_skips
    assert {Path(p).name for p, _ in summary.errors} >= {p.name for p in files if EXPECTED[kind_of(p)]
                                                        and EXPECTED[kind_of(p)] != "not an image (.txt)"}
    assert all(Path(p).name in message for p, message in summary.errors)  # every error names its file

    # the command a user runs, and what it prints (the count by reason)
    assert main(["data", "index", str(root), "--out", str(tmp_path / "datalist.json")]) == 0
    printed = capsys.readouterr().out
    skip_line = next((line for line in printed.splitlines() if line.startswith("skipped ")), printed)
    assert skip_line == (f"skipped {sum(expected_skips.values())} file(s): "
                         + ", ".join(f"{n} {reason}" for reason, n in sorted(expected_skips.items()))), skip_line
    with capsys.disabled():
        kept = len(files) - sum(expected_skips.values())
        print(f"\nmalformed corpus: {len(files)} files, {kept} kept ({len(_kept_images(datalist))} images with "
              "NIfTI slices), "
              f"{sum(expected_skips.values())} skipped by reason:")
        for reason, n in sorted(expected_skips.items(), key=lambda kv: -kv[1]):
            print(f"  {n:4d}  {reason}")


@pytest.mark.slow
def test_kept_items_load_right_and_bad_files_are_dropped_at_load(corpus):
    root, _ = corpus
    datalist, _ = build_datalist(root)
    kept = _kept_images(datalist)
    for channels in (1, 3):
        ds = SkipFailedCacheDataset(kept, diffusion_transforms(32, channels=channels), num_workers=2,
                                    progress=False)
        assert len(ds) == len(kept) and not ds.skipped
        for i in range(len(ds)):
            image = ds[i]["image"]
            assert image.shape == (channels, 32, 32) and torch.isfinite(image).all(), ds.data[i]["image"]
            assert float(image.max() - image.min()) > 0.05, ds.data[i]["image"]
    # the odd-but-valid kinds hold what PIL shows (EXIF orientation applied, palette through its palette, ...)
    loader = LoadMedicalImage()
    for path in _files(root):
        if kind_of(path) in PIL_KINDS:
            with Image.open(path) as im:
                want = np.asarray(ImageOps.exif_transpose(im).convert("L"), np.float32) / 255
            assert np.abs(loader(str(path)).numpy()[0] - want).max() <= 1.01 / 255, path.name
    # every file, unchecked, straight into the training dataset: the bad ones are dropped, the good ones kept
    raw = [{"image": str(p), "label": CLASSES.index(p.parent.name)} for p in _files(root)]
    ds = SkipFailedCacheDataset(raw, diffusion_transforms(32), num_workers=2, progress=False)
    dropped = {kind_of(p) for p, _ in ds.failures}
    assert {kind_of(d["image"]) for d in ds.data if Path(d["image"]).parent.parent == root}.isdisjoint(dropped)
    assert all(EXPECTED[kind] is not None for kind in dropped)
    assert all(EXPECTED[kind_of(d["image"])] is None for d in ds.data)
    assert len(ds) + len(ds.failures) == len(raw)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr
    return proc


@pytest.mark.slow
def test_train_sample_export_on_the_corpus(corpus, tmp_path):
    """Training on a datalist that still holds every bad file (as if indexed without checks) drops them with a
    logged reason and finishes; sampling and DICOM export of its weights finish too."""
    root, _ = corpus
    files = _files(root)
    bad = [p for p in files if EXPECTED[kind_of(p)] is not None]
    good = [p for p in files if EXPECTED[kind_of(p)] is None][::4]
    items = [{"image": str(p), "label": CLASSES.index(p.parent.name)} for p in sorted(bad + good)]
    datalist = tmp_path / "unchecked.json"
    datalist.write_text(json.dumps({"classes": list(CLASSES), "training": items, "validation": [], "test": []}))
    run_dir = tmp_path / "run"
    medgen = [sys.executable, "-m", "medgen.cli"]
    train = _run([*medgen, "train", "cxr_ddpm", "--dataset-dir", str(datalist), "--output_dir", str(run_dir),
                  "--max_epochs", "1", "--batch_size", "8", "--num_workers", "2", "--sample_interval", "100",
                  "--checkpoint_interval", "1", *TINY])
    log = train.stdout + train.stderr
    assert f"dropped {len(bad)} of {len(items)} items that failed to load" in log
    assert all(p.name in log for p in bad)  # one line per file, naming it
    losses = [json.loads(line)["loss"] for line in (run_dir / "loss.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and np.isfinite(losses).all()
    samples = tmp_path / "samples"
    _run([*medgen, "sample", "cxr_ddpm", "--ckpt", str(run_dir / "model.pt"), "--out", str(samples),
          "--per-class", "2", "--steps", "2"])
    pngs = sorted(samples.glob("*/*.png"))
    assert len(pngs) == 4
    for png in pngs:
        with Image.open(png) as im:
            assert im.size == (32, 32)
    _run([*medgen, "export", str(samples), "--out", str(tmp_path / "dicom")])
    exported = sorted((tmp_path / "dicom").rglob("*.dcm"))
    assert len(exported) == 4
    for path in exported:
        image, _ = read_dicom_image(path)
        assert image.shape == (32, 32) and np.isfinite(image).all()
