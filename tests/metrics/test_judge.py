"""`medgen judge`: a classifier trained on real training images labels real held-out and synthetic images.

Real images standing in for synthetic ones must pass (small accuracy gap, no rejecting chi-square); images given the
wrong class, or noise, must fail (large gap, rejecting tests). Grey: Kermany chest X-rays; colour: PBC blood cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data"))
KERMANY, PBC = DATA / "chest_xray_kermany_224", DATA / "blood_cells_pbc"
PBC_CLASSES = ["erythroblast", "lymphocyte", "neutrophil", "platelet"]
PNGS = ("confusion_real.png", "confusion_synthetic.png", "calibration.png", "confidence.png")


def medgen(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: far faster than oversubscribed cores on a busy box
    return subprocess.run([sys.executable, "-m", "medgen.cli", *args], capture_output=True, text=True, timeout=1200,
                          cwd=REPO, env=env)


def files_of(folder: Path, start: int, n: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[start : start + n]


def write_datalist(path: Path, classes: list[str], splits: dict[str, dict[str, list[Path]]]) -> Path:
    data = {"classes": classes}
    for split, by_class in splits.items():
        data[split] = [{"image": str(f), "label": classes.index(c)} for c, files in by_class.items() for f in files]
    path.write_text(json.dumps(data))
    return path


def write_samples(folder: Path, images: dict[str, list], size: int, mode: str) -> Path:
    """A samples folder as `medgen sample` writes it: <class>/<n>.png + samples.jsonl naming each file's class.
    ``images``: class -> image files or arrays (H x W (x 3) uint8)."""
    lines = []
    for name, items in images.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            rel = f"{name}/{i:06d}_s{i}.png"
            im = Image.open(item) if isinstance(item, Path) else Image.fromarray(item)
            im.convert(mode).resize((size, size), Image.BILINEAR).save(folder / rel)
            lines.append(json.dumps({"file": rel, "class": name, "label": 0, "seed": i}))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """Kermany: 40 training and 40 test images per class; 30 other test images per class as 'synthetic'; the
    classifier trained once through the CLI at 32 px."""
    if not KERMANY.is_dir():
        pytest.skip(f"real test data not found at {KERMANY} (set MEDGEN_TEST_DATA)")
    tmp = tmp_path_factory.mktemp("judge_grey")
    classes = ["NORMAL", "PNEUMONIA"]
    dl = write_datalist(tmp / "datalist.json", classes, {
        "training": {c: files_of(KERMANY / "train" / c, 0, 40) for c in classes},
        "test": {c: files_of(KERMANY / "test" / c, 0, 40) for c in classes},
    })
    other = {c: files_of(KERMANY / "test" / c, 100, 30) for c in classes}
    same = write_samples(tmp / "same", other, 32, "L")
    swapped = write_samples(tmp / "swapped", {"NORMAL": other["PNEUMONIA"], "PNEUMONIA": other["NORMAL"]}, 32, "L")
    out = tmp / "judge_same"
    run = medgen("judge", str(same), str(dl), "--out", str(out), "--epochs", "10", "--batch-size", "16")
    return {"tmp": tmp, "datalist": dl, "same": same, "swapped": swapped, "out": out, "run": run}


@pytest.mark.slow
def test_grey_real_images_as_synthetic_pass(grey):
    run = grey["run"]
    assert run.returncode == 0, run.stderr[-2000:]
    out = grey["out"]
    result = json.loads((out / "judge.json").read_text())
    for png in PNGS:
        assert (out / png).stat().st_size > 1000, png
    assert result["channels"] == 1 and result["image_size"] == 32
    assert result["seed"] == 0 and result["classifier"]["sha256"] == sha256(out / "judge_classifier.pt")
    assert result["counts"] == {"real": 80, "synthetic": 60, "samples_listed": 60, "samples_left_out": {}}
    assert result["real"]["accuracy"] > 0.65  # the classifier learnt something
    assert abs(result["accuracy_gap_points"]) < 15
    assert result["chi_square"]["p_value"] > 0.01
    assert np.asarray(result["synthetic"]["confusion_matrix"]).sum() == 60
    # the printed table: real vs synthetic accuracy per class, side by side
    table = run.stdout
    assert "real acc" in table and "synth acc" in table
    assert all(any(line.startswith(c) for line in table.splitlines()) for c in ("NORMAL", "PNEUMONIA", "overall"))


@pytest.mark.slow
def test_grey_swapped_classes_fail_with_the_classifier_reused(grey):
    given = grey["out"] / "judge_classifier.pt"
    out = grey["tmp"] / "judge_swapped"
    run = medgen("judge", str(grey["swapped"]), str(grey["datalist"]), "--out", str(out), "--classifier", str(given))
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "judge.json").read_text())
    assert result["classifier"]["sha256"] == sha256(given)  # reused, not retrained
    assert result["classifier"]["reused"] == str(given.resolve())
    assert result["accuracy_gap_points"] > 25
    assert result["chi_square"]["p_value"] < 1e-3
    assert result["confidence"]["overall"]["ks_p_value"] < 1e-3
    gate = medgen("judge", str(grey["swapped"]), str(grey["datalist"]), "--out", str(out), "--classifier",
                  str(given), "--max-gap", "5")
    assert gate.returncode == 1 and "--max-gap" in gate.stderr


@pytest.mark.slow
def test_classifier_of_another_size_is_refused(grey, capsys):
    line = one_line_error(capsys, str(grey["same"]), str(grey["datalist"]), "--out", str(grey["tmp"] / "x"),
                          "--classifier", str(grey["out"] / "judge_classifier.pt"), "--size", "48")
    assert "judge_classifier.pt" in line and "32 px" in line and "48 px" in line


@pytest.mark.slow
def test_evaluate_has_the_judge_section(grey):
    from medgen.cli import main

    out, given = grey["tmp"] / "evaluate", grey["out"] / "judge_classifier.pt"
    common = [str(grey["same"]), str(grey["datalist"]), "--size", "32", "--features", "", "--max-real-per-class", "20"]
    assert main(["evaluate", *common, "--out", str(out), "--judge-classifier", str(given)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"]["classifier"]["sha256"] == sha256(given)
    assert metrics["judge"]["counts"]["synthetic"] == 60
    assert (out / "judge" / "judge.json").is_file() and (out / "judge" / "calibration.png").is_file()
    page = (out / "report.html").read_text()
    assert "Classifier judge" in page and "synthetic accuracy" in page
    assert all(f'alt="{name}"' in page for name in ("confusion_real", "confusion_synthetic", "calibration"))
    assert main(["evaluate", *common, "--out", str(grey["tmp"] / "ev2"), "--no-judge", "--no-report"]) == 0
    assert "judge" not in json.loads((grey["tmp"] / "ev2" / "metrics.json").read_text())


@pytest.mark.slow
def test_an_evaluation_folder_holds_one_evaluation(grey, capsys):
    """Evaluating other samples into a folder would replace its figures, and a part left out of a rerun
    (--no-report, --no-judge) would stay beside figures it does not show: both refused before any work."""
    from medgen.cli import main

    out, given = grey["tmp"] / "one_evaluation", grey["out"] / "judge_classifier.pt"
    common = [str(grey["datalist"]), "--out", str(out), "--size", "32", "--features", "", "--max-real-per-class", "20",
              "--judge-classifier", str(given)]
    assert main(["evaluate", str(grey["same"]), *common]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    def refused(*args: str) -> str:
        assert main(["evaluate", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
        return err[0]

    line = refused(str(grey["swapped"]), *common)
    assert f"{out} holds the evaluation of {grey['same']} against {grey['datalist']}" in line
    assert "--out DIR" in line
    line = refused(str(grey["same"]), *common, "--no-report", "--redact-paths")
    assert f"{out / 'report.html'} is an earlier evaluation's" in line and "--no-report" in line
    line = refused(str(grey["same"]), *common, "--no-judge")
    assert f"{out / 'judge'} is an earlier evaluation's" in line and "--no-judge" in line
    (out / "metrics.json").write_text("{}")  # not an evaluation's: a user's own file of that name is not replaced
    before[Path("metrics.json")] = b"{}"
    assert "no evaluation's metrics" in refused(str(grey["same"]), *common)
    (out / "metrics.json").unlink()
    assert main(["evaluate", str(grey["same"]), *common]) == 0  # the same samples again: replaced
    assert json.loads((out / "metrics.json").read_text())["samples_dir"] == str(grey["same"])


@pytest.mark.slow
def test_a_deleted_or_damaged_sample_is_left_out_and_counted(grey, capsys, caplog):
    """A reviewer deletes an image (its record stays in samples.jsonl), another is damaged: evaluation, the audit and
    the judge read the others, count the two by reason in their JSON and print them; none stops."""
    from medgen.cli import main

    culled = Path(shutil.copytree(grey["same"], grey["tmp"] / "culled"))
    first, second = sorted((culled / "NORMAL").glob("*.png"))[:2]
    first.unlink()
    second.write_bytes(second.read_bytes()[:100])
    left_out = {"deleted from the samples folder": 1, "unreadable sample": 1}
    common = [str(culled), str(grey["datalist"]), "--size", "32"]
    capsys.readouterr()
    assert main(["evaluate", *common, "--out", str(grey["tmp"] / "ev_culled"), "--features", "",
                 "--max-real-per-class", "20", "--judge-classifier", str(grey["out"] / "judge_classifier.pt")]) == 0
    printed = capsys.readouterr()
    assert "samples left out: 1 deleted from the samples folder, 1 unreadable sample" in printed.out
    assert any(f"cannot read image {second}" in r.getMessage() for r in caplog.records)  # named in the log
    metrics = json.loads((grey["tmp"] / "ev_culled" / "metrics.json").read_text())
    assert metrics["generated_skipped"] == left_out and metrics["n_generated"] == 58
    assert metrics["judge"]["counts"]["samples_left_out"] == left_out
    assert metrics["judge"]["counts"]["synthetic"] == 58 and metrics["judge"]["counts"]["samples_listed"] == 60
    page = (grey["tmp"] / "ev_culled" / "report.html").read_text()
    assert "58 generated (2 samples left out: 1 deleted from the samples folder, 1 unreadable sample)" in page
    assert main(["audit", *common, "--out", str(grey["tmp"] / "audit_culled"), "--features", ""]) in (0, 1)
    assert json.loads((grey["tmp"] / "audit_culled" / "audit.json").read_text())["generated_skipped"] == left_out
    assert "samples left out: 1 deleted" in capsys.readouterr().out


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """PBC blood cells, 4 classes: 40 training and 25 test images per class, 25 others per class as 'synthetic';
    the classifier trained once at 32 px, RGB."""
    if not PBC.is_dir():
        pytest.skip(f"real test data not found at {PBC} (set MEDGEN_TEST_DATA)")
    from medgen.metrics.judge import judge

    tmp = tmp_path_factory.mktemp("judge_colour")
    dl = write_datalist(tmp / "datalist.json", PBC_CLASSES, {
        "training": {c: files_of(PBC / c, 0, 40) for c in PBC_CLASSES},
        "test": {c: files_of(PBC / c, 40, 25) for c in PBC_CLASSES},
    })
    same = write_samples(tmp / "same", {c: files_of(PBC / c, 100, 25) for c in PBC_CLASSES}, 32, "RGB")
    result = judge(same, dl, tmp / "judge_same", epochs=10, batch_size=16, seed=3)
    return {"tmp": tmp, "datalist": dl, "result": result}


@pytest.mark.slow
def test_colour_real_images_as_synthetic_pass(colour):
    import torch

    result = colour["result"]
    assert result["channels"] == 3 and result["seed"] == 3
    weights = torch.load(colour["tmp"] / "judge_same" / "judge_classifier.pt", weights_only=True)
    assert weights["state_dict"]["conv1.weight"].shape[1] == 3 and weights["seed"] == 3
    assert result["real"]["accuracy"] > 0.6
    assert abs(result["accuracy_gap_points"]) < 15
    assert result["chi_square"]["p_value"] > 0.01


@pytest.mark.slow
def test_colour_noise_and_relabelled_cells_fail(colour):
    from medgen.metrics.judge import judge

    given = colour["tmp"] / "judge_same" / "judge_classifier.pt"
    rng = np.random.default_rng(0)
    noise = write_samples(colour["tmp"] / "noise", {c: [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                                                        for _ in range(25)] for c in PBC_CLASSES}, 32, "RGB")
    result = judge(noise, colour["datalist"], colour["tmp"] / "judge_noise", classifier=given)
    assert result["accuracy_gap_points"] > 30
    assert result["chi_square"]["p_value"] < 1e-3
    # platelets handed in as lymphocytes: that class's accuracy collapses and its predicted labels differ
    cells = {c: files_of(PBC / c, 100, 25) for c in PBC_CLASSES}
    cells["lymphocyte"] = files_of(PBC / "platelet", 100, 25)
    relabelled = write_samples(colour["tmp"] / "relabelled", cells, 32, "RGB")
    result = judge(relabelled, colour["datalist"], colour["tmp"] / "judge_relabelled", classifier=given)
    assert result["accuracy_gap_points_per_class"]["lymphocyte"] > 50
    assert result["chi_square"]["per_class"]["lymphocyte"]["p_value"] < 1e-3
    assert result["confidence"]["lymphocyte"]["ks_p_value"] < 1e-3


def one_line_error(capsys, *args: str) -> str:
    """Run ``medgen judge ARGS`` in this process; it must exit 2 with exactly one line on stderr."""
    from medgen.cli import main

    capsys.readouterr()
    assert main(["judge", *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    if not KERMANY.is_dir():
        pytest.skip(f"real test data not found at {KERMANY} (set MEDGEN_TEST_DATA)")
    classes = ["NORMAL", "PNEUMONIA"]
    dl = write_datalist(tmp_path / "datalist.json", classes, {
        "training": {c: files_of(KERMANY / "train" / c, 0, 4) for c in classes},
        "test": {c: files_of(KERMANY / "test" / c, 0, 4) for c in classes},
    })
    samples = write_samples(tmp_path / "samples", {c: files_of(KERMANY / "test" / c, 10, 2) for c in classes}, 32,
                            "L")
    out = str(tmp_path / "o")
    # a samples folder without samples.jsonl
    bare = tmp_path / "bare"
    (bare / "NORMAL").mkdir(parents=True)
    Image.new("L", (32, 32)).save(bare / "NORMAL" / "a.png")
    line = one_line_error(capsys, str(bare), str(dl), "--out", out)
    assert str(bare) in line and "samples.jsonl" in line
    # a class the datalist lacks
    other = write_samples(tmp_path / "other", {"COVID": files_of(KERMANY / "test" / "NORMAL", 20, 2)}, 32, "L")
    line = one_line_error(capsys, str(other), str(dl), "--out", out)
    assert "samples.jsonl" in line and "'COVID'" in line and "NORMAL" in line
    # no held-out images: test and validation empty
    empty = write_datalist(tmp_path / "empty.json", classes, {
        "training": {c: files_of(KERMANY / "train" / c, 0, 4) for c in classes}, "test": {}, "validation": {}})
    line = one_line_error(capsys, str(samples), str(empty), "--out", out)
    assert "empty.json" in line and "empty" in line
    # a missing samples folder; a classifier file that is not one
    line = one_line_error(capsys, str(tmp_path / "nowhere"), str(dl), "--out", out)
    assert "nowhere" in line
    (tmp_path / "junk.pt").write_text("not weights")
    line = one_line_error(capsys, str(samples), str(dl), "--out", out, "--classifier", str(tmp_path / "junk.pt"))
    assert "junk.pt" in line
    assert not (tmp_path / "o" / "judge.json").exists()
