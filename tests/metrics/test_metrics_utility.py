"""The statistics of the downstream-utility experiment, on known tables, and the experiment on real X-rays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgen.metrics.utility import (
    auc,
    auc_gain_with_ci,
    auc_with_ci,
    bonferroni,
    confusion_matrix,
    f1_per_class,
    mcnemar,
    read_utility_json,
    utility_experiment,
)


def test_bonferroni_multiplies_by_the_number_of_tests_and_caps_at_one():
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert bonferroni([0.04]) == [0.04]
    assert bonferroni([]) == []


def test_mcnemar_exact_p_on_a_known_table():
    # 12 discordant pairs: real + synthetic alone right on 10, real alone right on 2, 30 both right, 8 both wrong
    real = np.array([True] * 30 + [False] * 8 + [False] * 10 + [True] * 2)
    both = np.array([True] * 30 + [False] * 8 + [True] * 10 + [False] * 2)
    r = mcnemar(real, both)
    assert r["only_real_plus_synthetic_correct"] == 10 and r["only_real_correct"] == 2
    # two-sided exact binomial: 2 * P(X <= 2 | n = 12, p = 1/2) = 2 * (1 + 12 + 66) / 4096
    assert r["p_value"] == pytest.approx(2 * 79 / 4096)
    assert mcnemar(real, real)["p_value"] == 1.0


def test_bootstrap_intervals_contain_their_point_estimates(rng):
    y = rng.random(300) < 0.4
    seeds = np.stack([y + rng.normal(scale=s, size=300) for s in (0.6, 0.9, 1.2)])  # 3 classifiers, same images
    r = auc_with_ci(seeds, y, boots=300)
    assert r["ci_low"] < r["auc"] < r["ci_high"]
    assert r["auc"] == pytest.approx(np.mean([auc(s, y) for s in seeds]))  # the mean over seeds
    single = auc_with_ci(seeds[0], y, boots=300)
    assert single["ci_low"] < single["auc"] < single["ci_high"] and single["auc"] == pytest.approx(auc(seeds[0], y))
    g = auc_gain_with_ci(seeds[2], seeds[0], y, boots=300)  # the less noisy classifier is better
    assert g["ci_low"] < g["gain"] < g["ci_high"] and g["gain"] > 0.05 and g["ci_low"] > 0
    same = auc_gain_with_ci(seeds[1], seeds[1], y, boots=50)
    assert same["gain"] == same["ci_low"] == same["ci_high"] == 0.0


def test_confusion_matrix_and_f1_on_known_predictions():
    truth, pred = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 1])
    assert confusion_matrix(truth, pred, 3).tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    # class 0: precision 1/2, recall 1/2; class 1: 2/4, 2/3 -> 4/7; class 2 never predicted nor right -> 0
    assert f1_per_class(truth, pred, 3) == pytest.approx([0.5, 4 / 7, 0.0])


def test_fine_tuning_starts_from_the_given_classifier_and_leaves_it_as_it_was():
    from medgen.metrics.classifier import train_classifier

    rng = np.random.default_rng(0)
    images, labels = rng.random((8, 1, 16, 16), dtype=np.float32), np.array([0, 1] * 4)
    base = train_classifier(images, labels, 2, epochs=1, batch_size=4, seed=0, augment=False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = train_classifier(images[::-1].copy(), labels, 2, epochs=1, batch_size=4, seed=1, lr=1e-12, init=base)
    fresh = train_classifier(images[::-1].copy(), labels, 2, epochs=1, batch_size=4, seed=1, lr=1e-12)
    w = "conv1.weight"
    assert torch.allclose(tuned.state_dict()[w], before[w], atol=1e-9)  # a learning rate of ~0 keeps the start
    assert not torch.allclose(fresh.state_dict()[w], before[w], atol=1e-3)  # without init: a new random start
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the pre-trained one untouched


def test_read_utility_json_refuses_what_is_not_a_utility_result(tmp_path):
    assert read_utility_json(tmp_path / "absent.json", required=False) is None
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_utility_json(tmp_path / "absent.json")
    (tmp_path / "m.json").write_text(json.dumps({"generated": {}}))
    with pytest.raises(ValueError, match="not a utility result"):
        read_utility_json(tmp_path / "m.json")
    (tmp_path / "u.json").write_text(json.dumps({"bundle": "x", "utility": {"rows": [], "classes": ["a", "b"]}}))
    assert read_utility_json(tmp_path / "u.json")["classes"] == ["a", "b"]


@pytest.mark.slow
def test_utility_experiment_on_real_xrays_reports_every_arm_and_corrects_across_sizes(kermany_root):
    from medgen.metrics.image_sets import datalist_from_class_folders, load_datalist_split

    def real(split: str, n: int):
        dl = datalist_from_class_folders({split: kermany_root / split}, per_class=n, seed=1)
        return load_datalist_split(dl, split, size=32)

    train, test = real("train", 10), real("test", 8)
    synthetic = train.subset(np.arange(0, len(train), 2))  # stands in for generated images: 5 per class
    r = utility_experiment(train, synthetic, test, sizes=(3, None), steps=2, batch_size=8, boots=30, seeds=[0, 1],
                           synthetic_per_class="match", fine_tune_lr=5e-4)
    arms = ["real", "real+synthetic", "synthetic, then real", "synthetic, then real+synthetic"]
    assert [(row["real_per_class"], row["arm"]) for row in r["rows"]] == [
        *((3, a) for a in arms), *(("all", a) for a in arms), (0, "synthetic only")]
    assert r["rows"][1]["n_synthetic"] == 6 and r["rows"][5]["n_synthetic"] == 10  # matched, capped at what exists
    tuned = r["rows"][2]  # the synthetic-only classifier (all 10 synthetic), fine-tuned on the 6 real images
    assert (tuned["n_real"], tuned["n_train"], tuned["n_synthetic"], tuned["pretrain_steps"], tuned["lr"]) == (
        6, 6, 10, 2, 5e-4)
    mixed = r["rows"][3]  # ... and on the 6 real images with the 6 synthetic ones of the real+synthetic arm
    assert (mixed["n_real"], mixed["n_train"], mixed["n_synthetic"], mixed["pretrain_steps"], mixed["lr"]) == (
        6, 12, 10, 2, 5e-4)
    for key in ("auc_gain_fine_tuned", "auc_gain_fine_tuned_mixed"):
        assert [g["real_per_class"] for g in r[key]] == [3, "all"]
        assert set(r[key][0]) == {"real_per_class", "NORMAL", "PNEUMONIA"}
    for row in r["rows"]:
        assert np.sum(row["confusion_matrix"]) == 2 * len(test)  # summed over the two seeds
        assert set(row["f1"]) == {"NORMAL", "PNEUMONIA"} and row["steps"] == 2
        for a in row["auc"].values():
            assert a["ci_low"] <= a["auc"] <= a["ci_high"] and len(a["per_seed"]) == 2
    for t in r["mcnemar"] + r["mcnemar_fine_tuned"] + r["mcnemar_fine_tuned_mixed"]:  # 2 sizes x 3 arms
        for s in t["per_seed"]:
            assert s["p_bonferroni"] == pytest.approx(min(1.0, 6 * s["p_value"]))
    assert r["minority_class"] in ("NORMAL", "PNEUMONIA") and r["bonferroni_tests"] == 6

    plain = utility_experiment(train, synthetic, test, sizes=(3,), steps=2, batch_size=8, boots=30, seeds=[0],
                               synthetic_per_class="match", synthetic_only=False)
    assert [row["arm"] for row in plain["rows"]] == ["real", "real+synthetic"] and "auc_gain_fine_tuned" not in plain
    # the same seed gives the same real-only and real+synthetic classifiers whether or not the other arms run
    assert plain["rows"][0]["auc"]["NORMAL"]["per_seed"][0] == r["rows"][0]["auc"]["NORMAL"]["per_seed"][0]
    assert plain["rows"][1]["auc"]["NORMAL"]["per_seed"][0] == r["rows"][1]["auc"]["NORMAL"]["per_seed"][0]
