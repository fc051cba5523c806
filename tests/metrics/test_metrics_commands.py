"""The CLI entry points on a small slice of the real Kermany chest X-rays (slow: real files, training, features)."""

import json
import shutil

import numpy as np
import pytest

from medgen.metrics.baselines import write_baseline
from medgen.metrics.commands import audit_command, drift_command, evaluate_command, fit_gate_command
from medgen.metrics.image_sets import load_datalist_split, read_datalist, write_samples_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def heldout(kermany_datalist):
    return load_datalist_split(kermany_datalist, "test", size=64)


def test_evaluate_writes_metrics_and_report(tmp_path, kermany_datalist, heldout, isolated_cache):
    samples = write_baseline(heldout, "noise", tmp_path / "noise")
    rc = evaluate_command(str(samples), str(kermany_datalist), str(tmp_path / "out"), features="domain")
    assert rc == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(m["generated"]) == {"overall", "NORMAL", "PNEUMONIA"}
    assert (
        m["generated"]["overall"]["domain"]["fid"]["value"]
        > m["floor_real_heldout"]["overall"]["domain"]["fid"]["value"]
    )
    assert 'id="memorisation"' in (tmp_path / "out" / "report.html").read_text()


def test_audit_exits_non_zero_when_a_training_image_is_copied(tmp_path, kermany_datalist, heldout, isolated_cache):
    clean = write_baseline(heldout, "noise", tmp_path / "clean")
    assert audit_command(str(clean), str(kermany_datalist), str(tmp_path / "a0"), features="") == 0
    train_file = read_datalist(kermany_datalist)["training"][3]
    leaky = tmp_path / "leaky"
    shutil.copytree(clean, leaky)
    (leaky / "NORMAL" / "copy.jpeg").write_bytes(open(train_file["image"], "rb").read())
    with open(leaky / "samples.jsonl", "a") as f:
        f.write(json.dumps({"file": "NORMAL/copy.jpeg", "class": "NORMAL", "label": 0, "seed": 99}) + "\n")
    assert audit_command(str(leaky), str(kermany_datalist), str(tmp_path / "a1"), features="domain") == 1
    audit = json.loads((tmp_path / "a1" / "audit.json").read_text())
    assert any(f["file"].endswith("copy.jpeg") and f["train_file"] == train_file["image"] for f in audit["flagged"])
    assert (tmp_path / "a1" / "closest_pairs.png").is_file()


def test_drift_same_images_vs_noisy_images(tmp_path, kermany_datalist, heldout, isolated_cache):
    same = write_samples_dir(tmp_path / "same", heldout.images, heldout.labels, heldout.classes)
    noisy = write_baseline(heldout, "noise", tmp_path / "noisy")
    dl = str(kermany_datalist)
    assert drift_command(dl, str(same), out=str(tmp_path / "d0.json"), features="domain", permutations=200) == 0
    assert drift_command(dl, str(noisy), out=str(tmp_path / "d1.json"), features="domain", permutations=200) == 1
    assert json.loads((tmp_path / "d1.json").read_text())["p_value"] < 0.05


def test_fit_gate_and_bad_input_exit_codes(tmp_path, kermany_datalist, isolated_cache, capsys):
    assert fit_gate_command(str(kermany_datalist), str(tmp_path / "gate.npz"), k=3) == 0
    assert (tmp_path / "gate.npz").is_file()
    assert evaluate_command(str(tmp_path / "missing"), str(kermany_datalist), str(tmp_path / "o")) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_inception_fid_of_real_images_with_themselves(kermany_datalist, fid_weights, heldout, isolated_cache):
    from medgen.metrics.distribution import fid
    from medgen.metrics.features import InceptionFeatures, extract_features

    feats = extract_features(InceptionFeatures(fid_weights, batch_size=8), heldout)
    assert feats.shape == (len(heldout), 2048)
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-3)
    noisy = heldout.subset(np.arange(len(heldout)))
    noisy.images = np.clip(noisy.images + np.random.default_rng(0).normal(0, 0.15, noisy.images.shape), 0, 1)
    noisy.fingerprint = "noisy-" + noisy.fingerprint
    assert fid(feats, extract_features(InceptionFeatures(fid_weights, batch_size=8), noisy)) > 10
