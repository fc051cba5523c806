"""The quality protocol: counts from the held-out split, the floor at equal N, FID / floor, and its benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medgen.metrics.protocol import (
    ProtocolError,
    check_per_class,
    protocol_counts,
    ratio_rows,
    score_protocol,
)

REPO = Path(__file__).resolve().parents[2]


def test_counts_are_the_held_out_split_per_class_capped(kermany):
    from medgen.data.datalist import resolve_datalist

    datalist = resolve_datalist(str(kermany), classes=["NORMAL", "PNEUMONIA"], seed=0)
    assert protocol_counts(datalist) == {"NORMAL": 234, "PNEUMONIA": 390}  # Kermany's own test split
    assert protocol_counts(datalist, cap=300) == {"NORMAL": 234, "PNEUMONIA": 300}
    assert check_per_class({"NORMAL": 234, "PNEUMONIA": 390}, 100) == {"NORMAL": 100, "PNEUMONIA": 100}
    with pytest.raises(ProtocolError, match="only 234 of class 'NORMAL'.*at most 234 per class"):
        check_per_class({"NORMAL": 234, "PNEUMONIA": 390}, 300)


def test_a_class_missing_from_the_held_out_split_is_named():
    datalist = {"classes": ["a", "b"], "training": [{"label": 0}, {"label": 1}], "test": [{"label": 0}]}
    with pytest.raises(ProtocolError, match=r"no images of class\(es\) \['b'\]"):
        protocol_counts(datalist)


def gaussian(n: int, shift: float, seed: int, dim: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, (n, dim)).astype(np.float32)


def test_floor_is_measured_at_the_generated_count_and_ratios_separate_good_from_bad():
    classes = ["a", "b"]
    ref = (np.concatenate([gaussian(400, 0, 1), gaussian(400, 3, 2)]), np.repeat([0, 1], 400))
    held = (np.concatenate([gaussian(150, 0, 3), gaussian(250, 3, 4)]), np.repeat([0, 1], [150, 250]))
    good = (np.concatenate([gaussian(100, 0, 5), gaussian(100, 3, 6)]), np.repeat([0, 1], 100))
    bad = (np.concatenate([gaussian(100, 0.8, 7), gaussian(100, 3, 8)]), np.repeat([0, 1], 100))
    r_good = score_protocol(classes, ref, good, held)
    r_bad = score_protocol(classes, ref, bad, held)
    for r in (r_good, r_bad):
        assert all(r["classes"][c]["floor"]["n"] == r["classes"][c]["generated"]["n"] == 100 for c in classes)
    assert 0.6 < r_good["classes"]["a"]["fid_ratio"] < 1.6  # a sample of the same distribution scores like real
    assert r_bad["classes"]["a"]["fid_ratio"] > 3 * r_good["classes"]["a"]["fid_ratio"]  # a shifted one does not
    assert r_bad["classes"]["b"]["fid_ratio"] < 1.6  # and per class: class b was generated well
    rows = ratio_rows(r_bad)
    assert [row["class"] for row in rows] == ["a", "b", "overall"]
    assert {"FID", "floor FID", "FID / floor", "KID", "precision", "recall"} <= set(rows[0])


@pytest.fixture(scope="module")
def tiny_kermany(kermany, tmp_path_factory) -> Path:
    """Kermany's layout (train/test per class) with a few real images each, linked, not copied."""
    root = tmp_path_factory.mktemp("tiny_kermany")
    for split, n in (("train", 8), ("test", 3)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((kermany / split / cls).glob("*.jpeg"))[:n]:
                os.symlink(src, root / split / cls / src.name)
    return root


@pytest.mark.slow
def test_benchmark_scores_the_shipped_weights_and_records_what_it_measured(tiny_kermany, tmp_path, capsys):
    from benchmarks.quality import main

    out = tmp_path / "quality.json"
    args = ["--bundle", "cxr_ddpm", "--dataset-dir", str(tiny_kermany), "--samples-root", str(tmp_path / "s"),
            "--sampler", "dpmpp2m", "--steps", "4", "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "FID / floor" in printed and "NORMAL" in printed and "overall" in printed
    result = json.loads(out.read_text())
    from medgen.networks.weights_meta import sha256_of

    assert result["weights_sha256"] == sha256_of(REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt")
    assert result["counts"] == result["protocol_counts"] == {"NORMAL": 3, "PNEUMONIA": 3}
    assert "fewer images per class than the protocol's N" not in printed
    # the given sampler and steps, the bundle's own guidance (inference.yaml: 1.5) and, for its shipped weights,
    # its shipped autoguidance guide
    assert result["sampling"] == {"sampler": "dpmpp2m", "num_inference_steps": 4, "guidance_scale": 1.5}
    assert result["guide_sha256"] == sha256_of(REPO / "bundles" / "cxr_ddpm" / "models" / "model_guide.pt")
    assert "-guide" in Path(result["samples_dir"]).name
    assert result["seeds"] == {"NORMAL": [20000, 20002], "PNEUMONIA": [120000, 120002]}
    assert {"cpu", "cores", "torch"} <= set(result["machine"])
    for name in ("NORMAL", "PNEUMONIA"):
        entry = result["classes"][name]
        assert entry["generated"]["n"] == entry["floor"]["n"] == 3
        assert entry["fid_ratio"] == pytest.approx(entry["generated"]["fid"] / entry["floor"]["fid"])
    samples = [json.loads(x) for x in (Path(result["samples_dir"]) / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {s["steps"] for s in samples} == {4}
    assert result["images_generated"] == 6 and result["images_found_on_disk"] == 0
    # a rerun scores the images on disk and says its seconds made none of them
    assert main(args) == 0
    again = json.loads(out.read_text())
    assert again["images_generated"] == 0 and again["images_found_on_disk"] == 6
    assert again["overall"]["fid_ratio"] == pytest.approx(result["overall"]["fid_ratio"])
    assert "0 images generated in" in capsys.readouterr().out
    # fewer than the protocol's N: FID / floor depends on N, so the run says so and the JSON keeps both counts
    assert main([*args, "--per-class", "2", "--json", str(tmp_path / "two.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["counts"] == {"NORMAL": 2, "PNEUMONIA": 2} and two["protocol_counts"] == {"NORMAL": 3, "PNEUMONIA": 3}
    assert "fewer images per class than the protocol's N {'NORMAL': 3, 'PNEUMONIA': 3}" in capsys.readouterr().out

    # the model cards quote this JSON: the same weights pass the check, other weights fail it in one line
    assert main(["--bundle", "cxr_ddpm", "--check", "--json", str(out)]) == 0
    other = dict(result, weights_sha256="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="has sha256 .* but .* was measured on 0000"):
        main(["--bundle", "cxr_ddpm", "--check", "--json", str(tmp_path / "other.json")])


@pytest.mark.slow
def test_a_latent_bundle_s_figures_name_its_autoencoder_too(tiny_kermany, tmp_path, capsys):
    """The decoder makes the pixels: the JSON records the autoencoder's sha256, --check refuses another one, and
    its samples folder is its own (a rerun with another decoder does not resume the old images)."""
    from benchmarks.quality import main
    from medgen.networks.weights_meta import sha256_of

    out = tmp_path / "quality.json"
    assert main(["--bundle", "cxr_ldm", "--dataset-dir", str(tiny_kermany), "--samples-root", str(tmp_path / "s"),
                 "--steps", "2", "--autoencoder-ceiling", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "its ceiling" in capsys.readouterr().out
    ceiling = result["autoencoder_ceiling"]  # reconstructions of held-out images scored as the samples are
    for name in ("NORMAL", "PNEUMONIA"):
        assert ceiling["classes"][name]["generated"]["n"] == ceiling["classes"][name]["floor"]["n"] == 3
        assert ceiling["classes"][name]["fid_ratio"] > 0
    autoencoder = REPO / "bundles" / "cxr_ldm" / "models" / "model_autoencoder.pt"
    assert result["autoencoder_sha256"] == sha256_of(autoencoder)
    assert f"-ae{result['autoencoder_sha256'][:8]}-" in Path(result["samples_dir"]).name
    assert main(["--bundle", "cxr_ldm", "--check", "--json", str(out)]) == 0
    # a smaller run resuming the same folder scores what it asked for, not what an earlier run left there
    assert main(["--bundle", "cxr_ldm", "--dataset-dir", str(tiny_kermany), "--samples-root", str(tmp_path / "s"),
                 "--steps", "2", "--per-class", "2", "--json", str(tmp_path / "two.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["samples_dir"] == result["samples_dir"]
    assert [two["classes"][c]["generated"]["n"] for c in ("NORMAL", "PNEUMONIA")] == [2, 2]
    (tmp_path / "other.json").write_text(json.dumps(dict(result, autoencoder_sha256="0" * 64)))
    with pytest.raises(SystemExit, match="model_autoencoder.pt has sha256 .* but .* was measured on 0000") as err:
        main(["--bundle", "cxr_ldm", "--check", "--json", str(tmp_path / "other.json")])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("extra, message", [
    (["--per-class", "5"], "asked for 5 generated images per class, but the held-out split has only 3"),
    (["--guidance", "-1"], "guidance_scale"),
    (["--steps", "0"], "num_inference_steps"),
    (["--steps", "5000"], "num_inference_steps"),
])
def test_bad_requests_stop_with_one_line(tiny_kermany, tmp_path, extra, message):
    from benchmarks.quality import main

    with pytest.raises(SystemExit, match=message) as err:
        main(["--bundle", "cxr_ddpm", "--dataset-dir", str(tiny_kermany), "--samples-root", str(tmp_path / "s"),
              "--json", str(tmp_path / "q.json"), *extra])
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["cxr_ddpm", "brain_mri_score", "cxr_ldm", "brain_mri_ldm", "blood_cells_ddpm"])
def test_the_figures_a_model_card_quotes_are_the_shipped_weights_at_the_protocol_s_n(bundle, shared_data, monkeypatch,
                                                                                     capsys):
    """quality_<bundle>_protocol_n.json, the figures a card and its metadata.json quote: measured on the weights (and
    guide, and autoencoder) the bundle ships, at its inference defaults, with as many images per class as the protocol
    asks of its data; metadata.json's eval_metrics are this JSON's figures."""
    from benchmarks.quality import bundle_datalist, effective_sampling, main

    path = REPO / "benchmarks" / "results" / f"quality_{bundle}_protocol_n.json"
    assert main(["--bundle", bundle, "--check", "--json", str(path)]) == 0
    monkeypatch.setenv("MEDGEN_DATA_DIR", str(shared_data))
    counts = protocol_counts(bundle_datalist(REPO / "bundles" / bundle, None))
    result = json.loads(path.read_text())
    assert result["sampling"] == effective_sampling(REPO / "bundles" / bundle, {})  # what inference.yaml samples with
    assert bool(result.get("guide_sha256")) == (REPO / "bundles" / bundle / "models" / "model_guide.pt").is_file()
    assert result["counts"] == counts
    assert all(result["classes"][name]["floor"]["n"] == n for name, n in counts.items())
    # and metadata.json's eval_metrics quote this JSON, not an older run
    quoted = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    for name, figures in [*result["classes"].items(), ("overall", result["overall"])]:
        assert quoted[f"protocol_fid_ratio_{name}"] == round(figures["fid_ratio"], 2), name
    assert {name: quoted[f"protocol_images_{name}"] for name in counts} == counts
    assert quoted["protocol_kid_inception_overall"] == pytest.approx(result["overall"]["generated"]["kid"], abs=5e-4)


def _card_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of a model card: rows of cells (the header row first, the |---| row dropped)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


@pytest.mark.parametrize("bundle", ["cxr_ddpm", "brain_mri_score", "cxr_ldm", "brain_mri_ldm", "blood_cells_ddpm"])
def test_a_model_card_s_first_table_at_the_protocol_s_n_is_the_protocol_json(bundle):
    """The card's own text: its first FID table with the protocol's N per class quotes quality_<bundle>_protocol_n.json
    (FID, floor FID and their ratio, as rounded in the card), not an older run's figures."""
    result = json.loads((REPO / "benchmarks" / "results" / f"quality_{bundle}_protocol_n.json").read_text())
    figures = {**result["classes"], "overall": result["overall"]}
    counts = {name: str(c["generated"]["n"]) for name, c in figures.items()}
    card = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
    for table in _card_tables(card):
        header, body = table[0], {row[0]: row for row in table[1:]}
        if header[:5] != ["class", "N", "FID", "floor FID", "FID / floor"]:
            continue
        if all(name in body and body[name][1] == n for name, n in counts.items() if name != "overall"):
            break
    else:
        pytest.fail(f"{bundle}'s card has no FID table with the protocol's N {counts}")
    for name, row in body.items():
        quoted = figures[name]
        assert row[1] == counts[name], name
        for cell, value in ((row[2], quoted["generated"]["fid"]), (row[3], quoted["floor"]["fid"]),
                            (row[4], quoted["fid_ratio"])):
            places = len(cell.partition(".")[2])
            assert float(cell) == round(value, places), f"{name}: the card says {cell}, the JSON {value}"
