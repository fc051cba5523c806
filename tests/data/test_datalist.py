import json

import numpy as np
import pytest

from medgen.cli import main
from medgen.data.datalist import DatalistError, build_datalist, index_csv, resolve_datalist, stratified_split


def test_folder_tree_keeps_its_train_test_split(kermany):
    datalist, summary = build_datalist(kermany, seed=0)
    assert datalist["classes"] == ["NORMAL", "PNEUMONIA"]
    # the set's own test split is kept whole; validation is carved from train, stratified
    assert len(datalist["test"]) == 234 + 390
    counts = {s: [sum(it["label"] == c for it in datalist[s]) for c in (0, 1)] for s in ("training", "validation")}
    assert counts["training"][0] + counts["validation"][0] == 1341
    assert counts["training"][1] + counts["validation"][1] == 3875
    assert counts["validation"][0] == round(0.1 * 1341)
    assert summary.skipped["system file"] == 3  # the .DS_Store files of the public download


def test_split_is_reproducible_and_seed_dependent(small_cxr_tree):
    a, _ = build_datalist(small_cxr_tree, seed=1, val_fraction=0.34, test_fraction=0.0)
    b, _ = build_datalist(small_cxr_tree, seed=1, val_fraction=0.34, test_fraction=0.0)
    assert a["validation"] == b["validation"]
    others = [build_datalist(small_cxr_tree, seed=s, val_fraction=0.34, test_fraction=0.0)[0] for s in range(3, 7)]
    assert any(o["validation"] != a["validation"] for o in others)
    assert sorted(it["label"] for it in a["validation"]) == [0, 0, 1, 1]


def test_junk_and_broken_files_are_skipped_and_counted(small_cxr_tree):
    datalist, summary = build_datalist(small_cxr_tree, val_fraction=0.0, test_fraction=0.0)
    assert len(datalist["training"]) == 12
    assert summary.skipped["system file"] == 2
    assert summary.skipped["unreadable image"] == 1
    assert any("broken.jpeg" in path for path, _ in summary.errors)


def test_npz_uses_official_splits(pneumoniamnist):
    datalist, _ = build_datalist(pneumoniamnist, classes=["normal", "pneumonia"])
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [4708, 524, 624]
    item = datalist["training"][0]
    assert item["npz_key"] == "train_images" and isinstance(item["npz_index"], int)
    labels = np.load(pneumoniamnist)["train_labels"].ravel()
    assert sum(it["label"] for it in datalist["training"]) == int(labels.sum())


def test_csv_with_chexpert_uncertain_labels(tmp_path, small_cxr_tree):
    images = sorted(p for p in (small_cxr_tree / "NORMAL").glob("*.jpeg"))[:5]
    rows = ["path,label", f"{images[0]},1", f"{images[1]},0", f"{images[2]},-1", f"{images[3]},", "missing.png,1"]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    items, classes, summary = index_csv(csv, uncertain="ignore")
    assert classes == ["negative", "positive"]
    assert sorted(it["label"] for it in items["all"]) == [0, 1]
    assert summary.skipped["uncertain label"] == 2 and summary.skipped["missing file"] == 1
    items, _, _ = index_csv(csv, uncertain="ones")
    assert sorted(it["label"] for it in items["all"]) == [0, 1, 1, 1]
    items, _, _ = index_csv(csv, uncertain="zeros")
    assert sorted(it["label"] for it in items["all"]) == [0, 0, 0, 1]


def test_unknown_class_and_missing_dir_are_clear_errors(small_cxr_tree, tmp_path):
    with pytest.raises(DatalistError, match="COVID"):
        build_datalist(small_cxr_tree, classes=["NORMAL", "COVID"])
    with pytest.raises(DatalistError, match="does not exist"):
        build_datalist(tmp_path / "nope")
    (small_cxr_tree / "EMPTY").mkdir()
    with pytest.raises(DatalistError, match="'EMPTY' has no readable images"):
        build_datalist(small_cxr_tree, classes=["NORMAL", "EMPTY"])


def test_stratified_split_preserves_class_ratio():
    items = [{"image": f"{i}.png", "label": int(i % 4 == 0)} for i in range(400)]
    split = stratified_split(items, {"validation": 0.2, "training": 0.8}, seed=0)
    assert len(split["validation"]) == 80
    assert sum(it["label"] for it in split["validation"]) == 20


def test_resolve_datalist_trims_per_class(small_cxr_tree, tmp_path):
    out = tmp_path / "dl.json"
    datalist = resolve_datalist(small_cxr_tree, max_items_per_class=2, out=out, val_fraction=0.0, test_fraction=0.0)
    assert sorted(it["label"] for it in datalist["training"]) == [0, 0, 1, 1]
    assert json.loads(out.read_text())["classes"] == ["NORMAL", "PNEUMONIA"]


def test_cli_data_index_prints_summary(small_cxr_tree, tmp_path, capsys):
    out = tmp_path / "datalist.json"
    assert main(["data", "index", str(small_cxr_tree), "--out", str(out), "--val-fraction", "0.34"]) == 0
    printed = capsys.readouterr().out
    assert "NORMAL" in printed and "skipped 3 file(s)" in printed
    assert set(json.loads(out.read_text())) >= {"training", "validation", "test", "classes"}
    assert main(["data", "index", str(tmp_path / "missing"), "--out", str(out)]) == 2
