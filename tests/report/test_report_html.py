"""report.html is self-contained and carries every section."""

import re

import numpy as np
import pytest
import torch

from medgen.metrics.evaluate import evaluate
from medgen.metrics.features import DomainFeatures
from medgen.metrics.image_sets import write_samples_dir
from medgen.report.html import SECTIONS

torch.set_num_threads(1)


@pytest.fixture
def small_datalist(tmp_path):
    """Synthetic 'real' images: two classes of blurred blobs, written as PNG files and a datalist."""
    import json

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 32.0
    items = {}
    for split, n in (("training", 24), ("test", 16)):
        imgs, labels = [], []
        for i in range(n):
            c = i % 2
            cx, cy = rng.uniform(0.3, 0.7, 2)
            img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.04 * c)) + rng.normal(0, 0.05, (32, 32))
            imgs.append(np.clip(img, 0, 1)[None])
            labels.append(c)
        folder = write_samples_dir(tmp_path / split, np.stack(imgs), labels, ["neg", "pos"])
        items[split] = [
            {"image": str(folder / f"{['neg', 'pos'][c]}/{i:06d}_s{i}.png"), "label": c} for i, c in enumerate(labels)
        ]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"classes": ["neg", "pos"], **items}))
    return path, np.stack(imgs), labels


def test_report_is_self_contained_and_has_every_section(tmp_path, small_datalist, isolated_cache):
    datalist, test_images, labels = small_datalist
    rng = np.random.default_rng(1)
    noisy = np.clip(test_images + rng.normal(0, 0.15, test_images.shape), 0, 1)
    samples = write_samples_dir(tmp_path / "samples", noisy, labels, ["neg", "pos"])
    m = evaluate(
        samples,
        datalist,
        tmp_path / "out",
        {"domain": DomainFeatures(None, size=32)},
        size=32,
        num_pairs=10,
        kid_subsets=5,
        utility_sizes=[4],
        utility_epochs=1,
        utility_kwargs={"min_steps": 2, "boots": 50},
    )
    html = (tmp_path / "out" / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html
    assert "report.html" and (tmp_path / "out" / "metrics.json").is_file()
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 8  # grids, histograms, audit, spectra, utility
    assert not re.search(r'(src|href)="(http|/|\./)', html)  # nothing fetched from outside the file
    assert {"overall", "neg", "pos"} <= set(m["generated"])
    arms = ["real", "real+synthetic", "synthetic, then real", "synthetic, then real+synthetic", "synthetic only"]
    assert [r["arm"] for r in m["utility"]["rows"]] == arms and m["utility"]["fine_tune_lr"] == 5e-4  # the benchmark's
    assert "synthetic, then real+synthetic" in html
    assert m["utility"]["auc_gain_fine_tuned_mixed"][0]["real_per_class"] == 4


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_report_shows_a_utility_json_given_or_found_in_the_samples_folder(tmp_path, small_datalist, isolated_cache):
    import json

    from medgen.metrics.image_sets import ImageSet
    from medgen.metrics.utility import utility_experiment

    datalist, images, labels = small_datalist
    real = ImageSet(images, labels, ["neg", "pos"])
    ut = utility_experiment(real, real, real, sizes=(4, None), steps=1, batch_size=8, boots=20)
    samples = write_samples_dir(tmp_path / "samples", images, labels, ["neg", "pos"])
    (samples / "utility.json").write_text(json.dumps({"bundle": "b", "utility": ut}))

    def report(**kw) -> str:
        evaluate(samples, datalist, tmp_path / "out", {"domain": DomainFeatures(None, size=32)}, size=32,
                 num_pairs=10, kid_subsets=5, **kw)
        return (tmp_path / "out" / "report.html").read_text()

    found = report().split('id="utility"')[1]
    assert "AUC pos [95% CI]" in found and "p (Bonferroni)" in found and "synthetic only" in found
    assert 'src="data:image/png;base64,' in found and "not run" not in found
    with pytest.raises(FileNotFoundError, match="absent.json"):
        report(utility_json=tmp_path / "absent.json")


def test_the_protocol_table_says_when_it_has_fewer_images_than_the_protocol_asks():
    from medgen.report.html import protocol_section

    def protocol(n: int) -> dict:
        entry = {"generated": {"n": n, "fid": 50.0, "kid": 0.02, "precision": 0.5, "recall": 0.7},
                 "floor": {"n": n, "fid": 20.0, "kid": 0.001, "precision": 0.9, "recall": 0.9}, "fid_ratio": 2.5}
        return {"classes": {"neg": entry, "pos": entry}, "overall": {**entry, "generated": {**entry["generated"]}},
                "features": "inception", "protocol_counts": {"neg": 405, "pos": 500}}

    fewer = protocol_section(protocol(100))
    assert "A full protocol run generates 405 neg, 500 pos images" in fewer
    assert "FID / floor here is lower than at the protocol's N" in fewer
    full = protocol(405)
    full["classes"]["pos"] = {**full["classes"]["pos"], "generated": {**full["classes"]["pos"]["generated"], "n": 500}}
    assert "lower than at the protocol's N" not in protocol_section(full)
