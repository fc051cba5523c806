"""`medgen fit-gate DATALIST gate.npz && medgen sample BUNDLE --quality-filter gate.npz`, as the README shows it.

The gate is fitted on real chest X-rays; the domain classifier it was fitted with is found beside the gate, through
the gate's record of the cached one, or trained again on the datalist the gate records. Sampling through the gate
keeps the requested sampler and steps: a kept image is the very image plain sampling makes with the same seed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgen.cli import main
from medgen.metrics.commands import load_gate
from medgen.metrics.quality_gate import QualityGate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fitted_gate(kermany_datalist, tmp_path_factory):
    """A gate fitted by `medgen fit-gate` on 12 + 12 real images per class, with its own feature cache."""
    folder = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE", str(folder / "cache"))
        mp.setattr(logging.root, "handlers", [])
        assert main(["fit-gate", str(kermany_datalist), str(folder / "gate.npz"), "--k", "3",
                     "--percentile", "100"]) == 0
    return folder / "gate.npz"


@pytest.mark.slow
def test_gate_finds_or_retrains_its_domain_classifier(fitted_gate, kermany_datalist, tmp_path, monkeypatch, capsys):
    gate = QualityGate.load(fitted_gate)
    assert gate.meta["features"] == "domain" and gate.meta["size"] == 64
    assert gate.meta["datalist"] == str(kermany_datalist.resolve())
    beside = fitted_gate.with_name("gate_domain.pt")
    assert gate.meta["domain_weights"] == beside.name and beside.is_file()
    assert load_gate(fitted_gate)[2]["domain_weights"] == str(beside.resolve())

    # moved elsewhere without the classifier: the cached one the gate records
    moved = tmp_path / "moved" / "gate.npz"
    moved.parent.mkdir()
    shutil.copy(fitted_gate, moved)
    cached = Path(gate.meta["domain_weights_cached"])
    assert cached.is_file() and load_gate(moved)[2]["domain_weights"] == str(cached)

    # and with the cache gone too: trained again on the recorded datalist, on first use
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "empty-cache"))
    hidden = cached.with_suffix(".hidden")
    cached.rename(hidden)
    try:
        _, extractor, info = load_gate(moved)
    finally:
        hidden.rename(cached)
    assert "training the gate's domain classifier" in capsys.readouterr().out
    assert Path(info["domain_weights"]).is_file() and str(tmp_path / "empty-cache") in info["domain_weights"]
    assert extractor(np.full((2, 1, 64, 64), 0.5, np.float32)).shape[0] == 2

    # a gate that records nothing (fitted elsewhere) and has nothing beside it: one clear line
    bare = QualityGate(gate.k, gate.percentile)
    bare.reference, bare.threshold = gate.reference, gate.threshold
    bare.save(tmp_path / "bare.npz")
    with pytest.raises(ValueError, match="pass --domain-weights"):
        load_gate(tmp_path / "bare.npz")


@pytest.mark.slow
def test_quality_filter_keeps_the_sampler_and_steps(fitted_gate, tmp_path, monkeypatch, capsys):
    if not (REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt").is_file():
        pytest.skip("cxr_ddpm has no shipped weights")
    monkeypatch.setattr(logging.root, "handlers", [])
    common = ["sample", "cxr_ddpm", "--class", "NORMAL", "--per-class", "1", "--sampler", "dpmpp2m", "--steps", "5"]
    gated = tmp_path / "gated"
    assert main([*common, "--quality-filter", str(fitted_gate), "--out", str(gated)]) == 0
    assert "quality filter:" in capsys.readouterr().out

    quality = json.loads((gated / "quality.json").read_text())
    assert (quality["sampler"], quality["steps"]) == ("dpmpp2m", 5)
    assert quality["domain_weights"] == str(fitted_gate.with_name("gate_domain.pt").resolve())
    assert quality["generated"] >= 1 and 0 <= quality["rejection_rate"] < 1
    (record,) = [json.loads(x) for x in (gated / "samples.jsonl").read_text().splitlines()]
    assert (record["sampler"], record["steps"]) == ("dpmpp2m", 5)
    assert record["realism_score"] <= quality["threshold"]

    # the folder goes on only through the same gate (without it, it would mix gated and ungated images), and the
    # second run's counts add to the first's in quality.json
    more = [*common[:common.index("--per-class") + 1], "2", *common[common.index("--per-class") + 2:]]
    assert main([*more, "--out", str(gated)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medgen: error: {gated} holds samples made otherwise (quality_gate {fitted_gate.resolve()} there "
                   "vs None now): write to another folder (--out DIR, --output_dir DIR)"]
    assert len((gated / "samples.jsonl").read_text().splitlines()) == 1
    assert main([*more, "--quality-filter", str(fitted_gate), "--out", str(gated)]) == 0
    assert "with the earlier runs into this folder" in capsys.readouterr().out
    both = json.loads((gated / "quality.json").read_text())
    assert both["generated"] >= quality["generated"] + 1 and both["rejected"] >= quality["rejected"]
    assert both["rejection_rate"] == both["rejected"] / both["generated"]
    assert len((gated / "samples.jsonl").read_text().splitlines()) == 2

    # the kept image is exactly what plain dpmpp2m sampling with 5 steps makes for its seed
    plain = tmp_path / "plain"
    assert main([*common, "--seed", str(record["seed"]), "--out", str(plain)]) == 0
    (again,) = [json.loads(x) for x in (plain / "samples.jsonl").read_text().splitlines()]
    assert again["seed"] == record["seed"]
    assert np.array_equal(np.asarray(Image.open(gated / record["file"])), np.asarray(Image.open(plain / again["file"])))
