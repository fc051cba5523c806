"""``python -m benchmarks.utility``: the bundle's own samples against real X-rays, end to end (tiny sizes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt"


def run_benchmark(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.utility", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_bundle_without_weights_fails_in_one_line_naming_the_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.utility import main

    bundle = tmp_path / "brain_mri_score"
    shutil.copytree(REPO / "bundles" / "brain_mri_score" / "configs", bundle / "configs")
    assert main(["--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bundle}/models/model.pt" in err[0] and "--weights PATH" in err[0]
    assert main(["--bundle", str(bundle), "--weights", str(tmp_path / "elsewhere.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "elsewhere.pt" in err[0]


def test_the_result_describes_the_images_used_and_refuses_a_folder_of_mixed_or_other_settings(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.utility import UtilityError, used_settings

    guide = "de02e9119f7ec0dba1b121e4b53323fe9c88410215d5a9840e07c2ee65431dfb"
    made = {"sampler": "dpmpp2m", "steps": 20, "guidance_scale": 1.5, "guide": "/b/models/model_guide.pt",
            "guide_sha256": guide}
    records = [{"file": f"NORMAL/{i}.png", **made} for i in range(3)]
    folder = Path("/runs/samples")
    assert used_settings(records, folder, {}) == {**made, "guidance_interval": None}  # guided at every step
    assert used_settings(records, folder, {"guidance_scale": 1.5, "guide_sha256": guide, "guidance_interval": None})
    unguided = {"sampler": "dpmpp2m", "steps": 20, "guidance_scale": 1.0}
    assert used_settings([unguided], folder, {"guide_sha256": None}) == {
        **unguided, "guide": None, "guide_sha256": None, "guidance_interval": None}
    with pytest.raises(UtilityError, match=r"^/runs/samples: its images were made with 2 sampling settings"):
        used_settings([*records, unguided], folder, {})
    with pytest.raises(UtilityError, match=r"^/runs/samples holds images made otherwise \(--guidance 3.0 asked, "
                                           r"1.5 there; --guide none asked, guide de02e9119f7e... there\)"):
        used_settings(records, folder, {"guidance_scale": 3.0, "guide_sha256": None})
    # a guidance interval is a setting of its own: images guided on some steps only are not those guided on every step
    interval = [{**r, "guidance_interval": [0.0, 5.0]} for r in records]
    assert used_settings(interval, folder, {"guidance_interval": [0.0, 5.0]})["guidance_interval"] == [0.0, 5.0]
    with pytest.raises(UtilityError, match=r"^/runs/samples: its images were made with 2 sampling settings"):
        used_settings([*records, *interval], folder, {})
    with pytest.raises(UtilityError, match=r"^/runs/samples holds images made otherwise \(--guidance-interval none "
                                           r"asked, \[0.0, 5.0\] there\)"):
        used_settings(interval, folder, {"guidance_interval": None})


@pytest.mark.slow
def test_benchmark_samples_once_trains_every_arm_and_writes_json_png_html(kermany, tmp_path):
    if not WEIGHTS.is_file():
        pytest.skip("the cxr_ddpm bundle ships no weights here")
    synth, out = tmp_path / "synthetic", tmp_path / "results"
    args = ["--bundle", "cxr_ddpm", "--synthetic-dir", str(synth), "--synthetic-per-class", "2",
            "--sampling-steps", "3", "--sizes", "3,all", "--train-per-class", "6", "--test-per-class", "6",
            "--seeds", "0", "--steps", "2", "--batch-size", "8", "--boots", "30", "--out", str(out)]
    first = run_benchmark(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "real+synthetic" in first.stdout and "synthetic only" in first.stdout and "p Bonf." in first.stdout
    result = json.loads((out / "utility_cxr_ddpm.json").read_text())
    assert result["weights_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert (result["sampler"], result["steps"]) == ("dpmpp2m", 3) and result["synthetic"]["generated_now"] == 4
    assert result["synthetic"]["seeds"] == {"NORMAL": [0, 1], "PNEUMONIA": [2, 3]}
    assert result["machine"]["cores"] and result["classifier"]["seeds"] == [0]
    ut = result["utility"]
    # by default the synthetic-only classifier is also fine-tuned on the real images, and on real + synthetic
    tuned, tuned_mix = "synthetic, then real", "synthetic, then real+synthetic"
    arms = ["real", "real+synthetic", tuned, tuned_mix]
    assert [r["arm"] for r in ut["rows"]] == [*arms, *arms, "synthetic only"]
    assert result["classifier"]["fine_tune_lr"] == 5e-4 and ut["rows"][2]["lr"] == ut["rows"][3]["lr"] == 5e-4
    assert [r["n_train"] for r in ut["rows"][:4]] == [6, 10, 6, 10]  # 3 real per class, + the 4 synthetic
    assert ut["test_per_class"] == [6, 6] and ut["rows"][-1]["n_train"] == 4
    for r in ut["rows"]:
        for a in r["auc"].values():
            assert a["ci_low"] <= a["auc"] <= a["ci_high"]
    tests = ut["mcnemar"] + ut["mcnemar_fine_tuned"] + ut["mcnemar_fine_tuned_mixed"]  # 2 sizes x 3 arms
    assert len(tests) == ut["bonferroni_tests"] == 6
    assert all(t["p_bonferroni"] == pytest.approx(min(1.0, 6 * t["p_value"])) for t in tests)
    target = result["target"]
    assert set(target["gain_at_by_arm"]) == {"real+synthetic", tuned, tuned_mix}
    assert "target: AUC gain >= +0.05" in first.stdout and tuned_mix in first.stdout
    with Image.open(out / "utility_cxr_ddpm.png") as im:
        assert im.format == "PNG" and im.size[0] > 200
    page = (out / "utility_cxr_ddpm.html").read_text()
    assert 'id="utility"' in page and "AUC NORMAL [95% CI]" in page and "data:image/png;base64," in page
    assert json.loads((synth / "utility.json").read_text())["weights_sha256"] == result["weights_sha256"]

    kept = sorted(synth.glob("utility-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == result and str(kept[0]) in first.stdout

    # the synthetic set is reused, not sampled again; --image-size resizes real and synthetic images alike; a run
    # with other settings on the same images keeps the first run's result beside its own, and --name names its files
    again = run_benchmark(*args, "--image-size", "32", "--fine-tune-lr", "0", "--name", "utility_control")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sampling" not in again.stdout.split("real:")[0] and "test images at 32x32" in again.stdout
    assert json.loads((out / "utility_cxr_ddpm.json").read_text()) == result
    assert {p.name for p in out.iterdir()} >= {f"utility_control.{ext}" for ext in ("json", "png", "html")}
    rerun = json.loads((out / "utility_control.json").read_text())
    both = sorted(synth.glob("utility-*.json"))
    assert len(both) == 2 and kept[0] in both and json.loads(kept[0].read_text()) == result
    assert json.loads((synth / "utility.json").read_text()) == rerun  # the latest run, for medgen evaluate
    assert rerun["synthetic"]["generated_now"] == 0
    assert (rerun["image_size"], rerun["model_image_size"]) == (32, 64)
    assert {r["arm"] for r in rerun["utility"]["rows"]} == {"real", "real+synthetic", "synthetic only"}  # lr 0: none
    assert rerun["utility"]["bonferroni_tests"] == 2
    tiny = run_benchmark(*args, "--image-size", "8")
    assert tiny.returncode == 2
    assert tiny.stderr.strip().splitlines() == ["error: --image-size 8: give at least 16 pixels"]
    wild = run_benchmark(*args, "--fine-tune-lr", "2")
    assert wild.returncode == 2 and wild.stderr.strip().splitlines() == [
        "error: --fine-tune-lr 2.0: give a learning rate in (0, 1], or 0 to leave the fine-tuned arms out"]

    # the bundle's default sampling autoguides: the result names the guide; other settings for the same folder fail
    guide = REPO / "bundles" / "cxr_ddpm" / "models" / "model_guide.pt"
    assert result["guide_sha256"] == hashlib.sha256(guide.read_bytes()).hexdigest()
    assert (result["guidance_scale"], result["synthetic"]["guide_sha256"]) == (1.5, result["guide_sha256"])
    other = run_benchmark(*args, "--guide", "none")
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"error: {synth} holds images made otherwise (--guide none asked, guide {result['guide_sha256'][:12]}... "
        "there): give another --synthetic-dir or leave those options out to use its images as they are"]
    # more images of other settings into the same folder: the sampler's refusal, as one line (not a traceback)
    more = list(args)
    for flag, value in (("--synthetic-per-class", "3"), ("--sampling-steps", "4")):
        more[more.index(flag) + 1] = value
    refused = run_benchmark(*more)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {synth} holds samples made otherwise (steps 3 "
                                                              "there vs 4 now)")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["brain_mri_score", "brain_mri_ldm"])
def test_both_brain_bundles_read_the_brain_set_merged_into_their_classes(shared_data, bundle, monkeypatch):
    """The real arm of a brain bundle: its own data set, the four tumour folders merged as the weights were trained."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.utility import real_sets
    from medgen.metrics.image_sets import preparation_of
    from medgen.networks.weights_meta import meta_value, read_meta

    meta = read_meta(REPO / "bundles" / bundle / "models" / "model.pt")
    classes = list(meta_value(meta, "classes", []))
    train, test, info = real_sets(bundle, classes, 32, preparation_of(meta), shared_data / "brain_tumor_mri_224",
                                  2, 2, meta_value(meta, "class_map", None))
    assert classes == ["notumor", "tumor"] and (info["train"], info["test"]) == ("Training", "Testing")
    assert sorted(train.labels) == [0, 0, 1, 1] and sorted(test.labels) == [0, 0, 1, 1]
