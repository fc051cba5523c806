"""``medgen audit`` as a user runs it on real chest X-rays: a flipped, cropped copy of a training image is caught,
the output says it is patient data, and ``--redact-paths`` keeps source paths and real pixels out of it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medgen.metrics.baselines import noise_baseline
from medgen.metrics.image_sets import load_datalist_split, read_datalist, write_samples_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def leaky_samples(kermany_datalist, tmp_path_factory):
    """Noisy held-out images (no copies) plus a horizontally flipped, 90%-cropped copy of training image 3."""
    from monai.transforms import Flip, Resize, SpatialCrop

    train = load_datalist_split(kermany_datalist, "training", size=64)
    held = load_datalist_split(kermany_datalist, "test", size=64)
    fresh = noise_baseline(held, 0.3, 0)
    crop = SpatialCrop(roi_start=(2, 5), roi_end=(60, 63))(Flip(spatial_axis=1)(train.images[3]))
    copy = np.asarray(Resize((64, 64), mode="bilinear")(crop), np.float32)[None]
    folder = tmp_path_factory.mktemp("samples") / "leaky"
    write_samples_dir(folder, np.concatenate([fresh, copy]), [*held.labels.tolist(), int(train.labels[3])],
                      train.classes)
    return folder, len(fresh), train.ids[3]


def audit(samples, datalist, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgen.cli", "audit", str(samples), str(datalist), "--out", str(out),
                           "--features", "", *extra], capture_output=True, text=True, timeout=900)


def test_audit_finds_a_flipped_cropped_copy_and_says_its_output_is_phi(leaky_samples, kermany_datalist, tmp_path):
    samples, n_fresh, source = leaky_samples
    proc = audit(samples, kermany_datalist, tmp_path / "a")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "PHI" in proc.stdout and "--redact-paths" in proc.stdout
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert [f["index"] for f in report["flagged"]] == [n_fresh]
    (hit,) = report["flagged"]
    assert hit["train_file"] == source and hit["transform"]["flip"] == "horizontal"
    assert 0.85 < hit["transform"]["crop_scale"] < 0.97
    assert report["phi_note"].startswith("PHI") and (tmp_path / "a" / "closest_pairs.png").is_file()


def test_redact_paths_names_training_images_by_datalist_place_and_writes_no_real_pixels(
    leaky_samples, kermany_datalist, tmp_path
):
    samples, n_fresh, source = leaky_samples
    out = tmp_path / "r"
    out.mkdir()
    (out / "closest_pairs.png").write_bytes(b"an earlier unredacted audit")
    proc = audit(samples, kermany_datalist, out, "--redact-paths")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    text = (out / "audit.json").read_text()
    root = str(kermany_datalist.parent)
    data = read_datalist(kermany_datalist)
    sources = {item["image"] for split in ("training", "test") for item in data[split]}
    assert not any(s in text for s in sources) and "chest_xray_kermany" not in text and root not in text
    report = json.loads(text)
    place = [i["image"] for i in data["training"]].index(source)
    assert report["flagged"][0]["train_file"] == f"training[{place}]" and report["redacted_paths"] is True
    assert report["closest_pairs"] is None and not (out / "closest_pairs.png").exists()
    assert f"and {out / 'closest_pairs.png'}" not in proc.stdout


def test_evaluate_with_redact_paths_writes_no_source_path_and_no_real_pixels(leaky_samples, kermany_datalist,
                                                                            tmp_path):
    from medgen.metrics.commands import evaluate_command

    samples, n_fresh, source = leaky_samples
    assert evaluate_command(str(samples), str(kermany_datalist), str(tmp_path / "e"), features="domain",
                            redact_paths=True) == 0
    metrics = (tmp_path / "e" / "metrics.json").read_text()
    data = read_datalist(kermany_datalist)
    assert not any(item["image"] in metrics for split in ("training", "test") for item in data[split])
    flagged = json.loads(metrics)["memorisation"]["flagged"]
    assert any(f["index"] == n_fresh and f["train_file"].startswith("training[") for f in flagged)
    report = (tmp_path / "e" / "report.html").read_text()
    assert "real: left out (--redact-paths)" in report and "Closest pairs" not in report and "PHI" in report
    # the note names what evaluate writes (report.html, metrics.json), not the audit's closest_pairs.png
    assert "closest_pairs.png" not in report and "metrics.json names the training files" in report
    assert "report.html shows real training pixels" in json.loads(metrics)["memorisation"]["phi_note"]
