"""CheXpert's own train.csv indexed as distributed, on a CheXpert-shaped tree of real chest X-rays."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from medgen.cli import main
from medgen.data.chexpert import OBSERVATIONS
from medgen.data.datalist import DatalistError, build_datalist, write_datalist

REPO = Path(__file__).resolve().parents[2]
PREFIX = "CheXpert-v1.0-small"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
CLASSES = "Pneumonia,Pneumothorax,No Finding"

# (patient, study, view, Frontal/Lateral, AP/PA, {observation: value}) with CheXpert's own spellings:
# "1.0" positive, "0.0" negative, "-1.0" uncertain, "" not mentioned.
ROWS = [
    (1, 1, 1, "Frontal", "AP", {"Pneumonia": "1.0", "Support Devices": "1.0"}),       # r1  Pneumonia
    (1, 1, 2, "Lateral", "", {"Pneumonia": "1.0", "Support Devices": "1.0"}),         # r2  lateral
    (2, 1, 1, "Frontal", "PA", {"No Finding": "1.0"}),                                  # r3  No Finding
    (3, 1, 1, "Frontal", "AP", {"Pneumothorax": "1.0", "Pleural Effusion": "-1.0"}),  # r4  Pneumothorax
    (4, 1, 1, "Frontal", "AP", {"Pneumonia": "-1.0", "Lung Opacity": "1.0"}),         # r5  uncertain Pneumonia
    (5, 1, 1, "Frontal", "PA", {"Pneumonia": "1.0", "Pneumothorax": "1.0"}),          # r6  ambiguous
    (6, 1, 1, "Frontal", "AP", {"Pneumonia": "0.0", "Edema": "1.0"}),                 # r7  none of the classes
    (7, 1, 1, "Frontal", "PA", {"No Finding": "1.0"}),                                  # r8  No Finding
    (8, 2, 1, "Frontal", "AP", {"Pneumothorax": "1.0", "Support Devices": "0.0"}),    # r9  Pneumothorax
    (9, 1, 1, "Frontal", "AP", {"Pneumonia": "1.0"}),                                   # r10 Pneumonia
    (9, 1, 2, "Lateral", "", {"Pneumothorax": "1.0"}),                                  # r11 lateral
    (10, 1, 1, "Frontal", "PA", {"Pneumonia": "-1.0", "Atelectasis": "1.0"}),         # r12 uncertain Pneumonia
    (11, 1, 1, "Frontal", "AP", {"Pneumonia": "1.0"}),                                  # r13 file not on disk
    (12, 1, 1, "Frontal", "AP", {"Pneumothorax": "-1.0", "Pleural Effusion": "1.0"}),  # r14 uncertain Pneumothorax
    (13, 1, 1, "Frontal", "PA", {"No Finding": "1.0", "Support Devices": "1.0"}),     # r15 No Finding
    (14, 1, 1, "Frontal", "AP", {"Pneumonia": "1.0", "Consolidation": "-1.0"}),       # r16 Pneumonia
    (15, 1, 1, "Frontal", "AP", {"Pneumonia": "1.0", "Pneumothorax": "-1.0"}),        # r17 Pneumonia, Ptx uncertain
]
MISSING = {13}


def rel_path(row_no: int) -> str:
    patient, study, view, kind, _, _ = ROWS[row_no - 1]
    return f"{PREFIX}/train/patient{patient:05d}/study{study}/view{view}_{kind.lower()}.jpg"


@pytest.fixture()
def chexpert(kermany: Path, tmp_path: Path) -> Path:
    """``tmp/data/CheXpert-v1.0-small/{train.csv, train/patient*/study*/view*_*.jpg}``: real X-rays, copied."""
    sources = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[:6] + sorted(
        (kermany / "train" / "PNEUMONIA").glob("*.jpeg"))[:len(ROWS)]
    container = tmp_path / "data"
    (container / PREFIX).mkdir(parents=True)
    with open(container / PREFIX / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for row_no, (patient, _, _, kind, projection, labels) in enumerate(ROWS, start=1):
            writer.writerow([rel_path(row_no), "Female" if patient % 2 else "Male", 40 + patient, kind, projection,
                             *(labels.get(name, "") for name in OBSERVATIONS)])
            if row_no not in MISSING:
                image = container / rel_path(row_no)
                image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(sources[row_no - 1], image)
    return container


def image_of(row_no: int, container: Path) -> str:
    return str((container / rel_path(row_no)).resolve())


def labels_by_image(datalist: dict) -> dict[str, int]:
    return {it["image"]: it["label"] for s in ("training", "validation", "test") for it in datalist[s]}


def index(container: Path, tmp_path: Path, *args: str, root: Path | None = None) -> tuple[int, dict | None]:
    out = tmp_path / "dl.json"
    out.unlink(missing_ok=True)
    code = main(["data", "index", str(container / PREFIX / "train.csv"), "--out", str(out),
                 "--val-fraction", "0", "--test-fraction", "0", *(["--root", str(root)] if root else []), *args])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_both_root_forms_give_the_same_existing_paths(chexpert, tmp_path, capsys):
    results = [index(chexpert, tmp_path, "--classes", CLASSES, root=root)
               for root in (chexpert, chexpert / PREFIX, None)]  # None: the CSV's own folder, as distributed
    assert [code for code, _ in results] == [0, 0, 0]
    first = results[0][1]
    assert all(dl == first for _, dl in results[1:])
    images = [it["image"] for it in first["training"]]
    assert len(images) == 8 and all(Path(p).is_file() for p in images)
    assert not any(f"{PREFIX}/{PREFIX}" in p for p in images)
    assert image_of(1, chexpert) in images
    printed = capsys.readouterr().out
    assert "17 rows read, 8 indexed" in printed and "1 missing file" in printed


def test_frontal_only_by_default_and_views_flag(chexpert, tmp_path):
    _, frontal = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--uncertain", "zeros")
    assert image_of(2, chexpert) not in labels_by_image(frontal) and len(frontal["training"]) == 14
    _, both = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--uncertain", "zeros", "--views",
                    "frontal,lateral")
    assert labels_by_image(both)[image_of(2, chexpert)] == 1 and labels_by_image(both)[image_of(11, chexpert)] == 0
    _, everything = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--uncertain", "zeros", "--views", "all")
    assert everything == both
    _, pa = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--uncertain", "zeros", "--views", "PA")
    pa_rows = [n for n, r in enumerate(ROWS, start=1) if r[4] == "PA"]
    assert sorted(labels_by_image(pa)) == sorted(image_of(n, chexpert) for n in pa_rows)
    datalist, summary = build_datalist(chexpert / PREFIX / "train.csv", label_column="Pneumonia", uncertain="zeros",
                                       views="PA", val_fraction=0, test_fraction=0)
    assert summary.skipped["AP projection not selected (--views)"] == 10
    assert summary.skipped["lateral view not selected (--views)"] == 2


@pytest.mark.parametrize(
    "policy, negatives, positives",
    [("ignore", 7, 5), ("zeros", 9, 5), ("ones", 7, 7), ("soft", 7, 7)],
)
def test_uncertain_policies_on_one_column(chexpert, tmp_path, policy, negatives, positives):
    datalist, summary = build_datalist(chexpert / PREFIX / "train.csv", label_column="Pneumonia", uncertain=policy,
                                       val_fraction=0, test_fraction=0)
    assert datalist["classes"] == ["negative", "positive"]
    labels = labels_by_image(datalist)
    assert Counter(labels.values()) == {0: negatives, 1: positives}
    # blank = not mentioned = negative; 0.0 negative; 1.0 positive
    assert labels[image_of(3, chexpert)] == 0 and labels[image_of(7, chexpert)] == 0
    assert labels[image_of(1, chexpert)] == 1
    uncertain = [image_of(5, chexpert), image_of(12, chexpert)]
    if policy == "ignore":
        assert not set(uncertain) & set(labels) and summary.skipped["uncertain label (--uncertain ignore)"] == 2
    else:
        assert {labels[p] for p in uncertain} == {int(policy in ("ones", "soft"))}
    soft = {it["image"]: it.get("soft_label") for it in datalist["training"]}
    if policy == "soft":  # the training label stays hard, the soft value rides along for metrics
        assert [soft[p] for p in uncertain] == [0.5, 0.5]
        assert soft[image_of(1, chexpert)] == 1.0 and soft[image_of(3, chexpert)] == 0.0
    else:
        assert set(soft.values()) == {None}


def test_two_names_for_one_column(chexpert, tmp_path):
    code, datalist = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--classes", "no,yes")
    assert code == 0 and datalist["classes"] == ["no", "yes"]
    assert labels_by_image(datalist)[image_of(1, chexpert)] == 1


@pytest.mark.parametrize(
    "policy, counts, ambiguous, unlabelled, uncertain",
    [("ignore", [3, 2, 3], 1, 1, 4), ("zeros", [4, 2, 3], 1, 4, 0), ("ones", [5, 3, 3], 2, 1, 0)],
)
def test_classes_from_several_columns(chexpert, policy, counts, ambiguous, unlabelled, uncertain):
    datalist, summary = build_datalist(chexpert / PREFIX / "train.csv", classes=CLASSES.split(","),
                                       uncertain=policy, val_fraction=0, test_fraction=0)
    assert datalist["classes"] == ["Pneumonia", "Pneumothorax", "No Finding"]
    labels = labels_by_image(datalist)
    assert [sum(v == c for v in labels.values()) for c in range(3)] == counts
    assert image_of(6, chexpert) not in labels  # positive for Pneumonia and Pneumothorax
    assert summary.skipped["ambiguous: positive in several classes"] == ambiguous
    assert summary.skipped["unlabelled: positive in none of the classes"] == unlabelled
    assert summary.skipped["uncertain label (--uncertain ignore)"] == uncertain
    assert summary.skipped["missing file"] == 1 and summary.skipped["lateral view not selected (--views)"] == 2
    assert sum(summary.skipped.values()) + len(labels) == len(ROWS)
    assert labels[image_of(15, chexpert)] == 2 and labels[image_of(4, chexpert)] == 1


def test_soft_labels_for_several_columns(chexpert):
    datalist, _ = build_datalist(chexpert / PREFIX / "train.csv", classes=CLASSES.split(","), uncertain="soft",
                                 val_fraction=0, test_fraction=0)
    soft = {it["image"]: (it["label"], it["soft_label"]) for it in datalist["training"]}
    assert soft[image_of(5, chexpert)] == (0, [0.5, 0.0, 0.0])
    assert soft[image_of(14, chexpert)] == (1, [0.0, 0.5, 0.0])
    assert soft[image_of(3, chexpert)] == (2, [0.0, 0.0, 1.0])


def test_nothing_usable_is_an_error_and_writes_nothing(chexpert, tmp_path, capsys):
    wrong_root = tmp_path / "elsewhere"
    wrong_root.mkdir()
    code, datalist = index(chexpert, tmp_path, "--label-column", "Pneumonia", "--uncertain", "zeros", root=wrong_root)
    err = capsys.readouterr().err.strip()
    assert code == 2 and datalist is None and not (tmp_path / "dl.json").exists()
    assert len(err.splitlines()) == 1
    assert "train.csv: no usable row among 17 rows read" in err
    assert "15 missing file" in err and "2 lateral view not selected" in err and "--root" in err
    code, datalist = index(chexpert, tmp_path, "--classes", "Pneumonia,Fracture")
    assert code == 2 and datalist is None
    assert "no image for class(es) ['Fracture']" in capsys.readouterr().err
    with pytest.raises(DatalistError, match="no training image"):
        write_datalist({"classes": ["a"], "training": [], "validation": [], "test": []}, tmp_path / "empty.json")
    assert not (tmp_path / "empty.json").exists()


def test_label_choice_errors_are_one_line(chexpert, tmp_path, capsys):
    assert index(chexpert, tmp_path)[0] == 2
    assert "choose the classes with --label-column" in capsys.readouterr().err
    assert index(chexpert, tmp_path, "--classes", "Pneumonia,Covid")[0] == 2
    assert "['Covid'] are not label columns" in capsys.readouterr().err
    assert index(chexpert, tmp_path, "--views", "oblique", "--label-column", "Edema")[0] == 2
    assert "'oblique' is not one of" in capsys.readouterr().err


@pytest.mark.parametrize("fractions", [["--val-fraction", "1.5"], ["--test-fraction", "-0.1"],
                                       ["--val-fraction", "abc"]])
def test_out_of_range_fractions_are_refused(chexpert, tmp_path, capsys, fractions):
    out = tmp_path / "dl.json"
    with pytest.raises(SystemExit) as stop:
        main(["data", "index", str(chexpert / PREFIX / "train.csv"), "--classes", CLASSES, "--out", str(out),
              *fractions])
    assert stop.value.code == 2 and not out.exists()
    assert fractions[0] in capsys.readouterr().err


def test_fractions_summing_to_one_are_refused(chexpert, tmp_path, capsys):
    out = tmp_path / "dl.json"
    code = main(["data", "index", str(chexpert / PREFIX / "train.csv"), "--classes", CLASSES, "--out", str(out),
                 "--val-fraction", "0.6", "--test-fraction", "0.4"])
    assert code == 2 and not out.exists() and "sum must be below 1" in capsys.readouterr().err


def test_generic_csv_route_still_takes_named_columns(chexpert, tmp_path):
    rows = ["file,diagnosis", f"{rel_path(1)},yes", f"{rel_path(3)},no", f"{rel_path(4)},yes"]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    datalist, _ = build_datalist(tmp_path / "mine.csv", classes=["no", "yes"], image_column="file",
                                 label_column="diagnosis", root=chexpert, val_fraction=0, test_fraction=0)
    assert datalist["classes"] == ["no", "yes"]
    assert labels_by_image(datalist) == {image_of(1, chexpert): 1, image_of(3, chexpert): 0, image_of(4, chexpert): 1}


@pytest.mark.slow
def test_chexpert_datalist_trains(chexpert, tmp_path):
    code, datalist = index(chexpert, tmp_path, "--classes", CLASSES, "--uncertain", "soft")
    assert code == 0 and datalist["classes"] == CLASSES.split(",")
    out = tmp_path / "run"
    tiny = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,False]",
            "--num_res_blocks", "1", "--norm_num_groups", "4", "--network_def#num_head_channels", "8"]
    brief = ["--batch_size", "4", "--max_epochs", "1", "--num_workers", "0", "--checkpoint_interval", "1",
             "--sample_interval", "1", "--samples_per_class_in_grid", "1", "--ema_warmup_iters", "1"]
    cmd = [sys.executable, "-m", "medgen.cli", "train", "cxr_ddpm", "--dataset-dir", str(tmp_path / "dl.json"),
           "--classes", "[Pneumonia, Pneumothorax, No Finding]", "--output_dir", str(out),
           "--model_path", str(out / "model.pt"), *tiny, *brief]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained_on = json.loads((out / "datalist.json").read_text())
    assert trained_on["classes"] == CLASSES.split(",") and len(trained_on["training"]) == 11
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert weights["class_embedding.weight"].shape[0] == 3 + 1  # the 3 CheXpert classes and the null class
    losses = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert losses and losses[-1]["epoch"] == 1


def test_classes_no_yes_stay_strings(small_cxr_tree, tmp_path):
    """``--classes no,yes`` (YAML would read booleans) names folders ``no`` and ``yes``."""
    (small_cxr_tree / "NORMAL").rename(small_cxr_tree / "no")
    (small_cxr_tree / "PNEUMONIA").rename(small_cxr_tree / "yes")
    out = tmp_path / "yn.json"
    assert main(["data", "index", str(small_cxr_tree), "--classes", "no,yes", "--out", str(out)]) == 0
    datalist = json.loads(out.read_text())
    assert datalist["classes"] == ["no", "yes"]
    assert {it["label"] for s in ("training", "validation", "test") for it in datalist[s]} == {0, 1}


def test_broken_image_is_skipped_unless_no_verify(chexpert, tmp_path, capsys):
    broken = chexpert / rel_path(1)
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG
    _, checked = index(chexpert, tmp_path, "--classes", CLASSES)
    assert image_of(1, chexpert) not in labels_by_image(checked) and len(checked["training"]) == 7
    assert "17 rows read, 7 indexed" in capsys.readouterr().out
    _, unchecked = index(chexpert, tmp_path, "--classes", CLASSES, "--no-verify")
    assert labels_by_image(unchecked)[image_of(1, chexpert)] == 0
