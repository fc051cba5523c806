"""The latent bundles (cxr_ldm at 256 px, brain_mri_ldm at 128 px) as a user runs them, on real images at 32 px with
tiny networks (6 held-out images per class, evaluation's minimum): stage 1 (train_autoencoder.yaml), stage 2 on its
latents (train_diffusion.yaml), both exported into the bundle, then inference.yaml with no overrides, evaluation and
the memorisation audit of the decoded samples; and the one-line errors before any training starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
LAYOUT = {  # bundle: (data set folder, {split folder: {class folder: images}})
    "cxr_ldm": ("chest_xray_kermany_224",
                {"train": {"NORMAL": 6, "PNEUMONIA": 6}, "test": {"NORMAL": 6, "PNEUMONIA": 6}}),
    "brain_mri_ldm": ("brain_tumor_mri_224", {"Training": {"glioma": 2, "meningioma": 2, "notumor": 6, "pituitary": 2},
                                              "Testing": {"glioma": 2, "meningioma": 2, "notumor": 6, "pituitary": 2}}),
}
CLASSES = {"cxr_ldm": ["NORMAL", "PNEUMONIA"], "brain_mri_ldm": ["notumor", "tumor"]}
# 32 px; cxr_ldm keeps its factor 8 (four levels), brain_mri_ldm its factor 4 (three)
TINY_AE = {"cxr_ldm": ["--autoencoder_channels", "[8,8,8,8]"], "brain_mri_ldm": ["--autoencoder_channels", "[8,8,8]"]}
COMMON_AE = ["--image_size", "32", "--crop_size", "16", "--num_res_blocks", "1", "--norm_num_groups", "4",
             "--perceptual_weight", "0", "--adv_warmup_iters", "1", "--discriminator_channels", "8",
             "--discriminator_layers", "2",
             "--batch_size", "4", "--max_epochs", "2", "--num_workers", "0", "--tensorboard_dir", "null"]
TINY_UNET = ["--unet_channels", "[16,32]", "--attention_levels", "[False,True]", "--num_res_blocks", "1",
             "--norm_num_groups", "8", "--network_def#num_head_channels", "16", "--batch_size", "4",
             "--max_epochs", "1", "--samples_per_class_in_grid", "1", "--sample_interval", "1",
             "--tensorboard_dir", "null"]


def monai_run(run_id: str, config: Path, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_DATA_DIR": "/nonexistent-so-only-given-data-is-read"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(config), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def data_tree(shared_data: Path, name: str, root: Path, layout: dict | None = None) -> Path:
    source_name, default_layout = LAYOUT[name]
    layout = layout or default_layout
    source = shared_data / source_name
    if not source.is_dir():
        pytest.skip(f"{source_name} not found at {source}")
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for f in sorted(p for p in (source / split / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]:
                (root / split / cls / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module", params=sorted(LAYOUT))
def trained(request: pytest.FixtureRequest, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the bundle whose models/ hold the two stages trained here (--export_to_bundle true)."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    data = data_tree(shared_data, name, tmp / "data")
    bundle = tmp / "bundles" / name
    shutil.copytree(REPO / "bundles" / name, bundle,
                    ignore=shutil.ignore_patterns("runs", "model*.pt", "model*.json"))
    configs, runs, elsewhere = bundle / "configs", tmp / "runs", tmp / "elsewhere"
    elsewhere.mkdir()
    before = monai_run("training", configs / "train_diffusion.yaml", "--dataset_dir", str(data), "--runs_dir",
                       str(runs), cwd=elsewhere, ok=False)
    written_before = sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.exists() else []
    stage1 = monai_run("training", configs / "train_autoencoder.yaml", "--dataset_dir", str(data), "--runs_dir",
                       str(runs), "--run_name", "ae", "--export_to_bundle", "True", *COMMON_AE, *TINY_AE[name],
                       cwd=elsewhere)
    stage2 = monai_run("training", configs / "train_diffusion.yaml", "--dataset_dir", str(data), "--runs_dir",
                       str(runs), "--run_name", "ldm", "--export_to_bundle", "True", *TINY_UNET, cwd=elsewhere)
    assert not any(elsewhere.iterdir())  # nothing written in the current folder
    return {"name": name, "bundle": bundle, "data": data, "runs": runs, "before": before,
            "written_before": written_before, "stage1": stage1, "stage2": stage2, "elsewhere": elsewhere}


@pytest.mark.slow
def test_the_diffusion_stage_before_any_autoencoder_is_one_line(trained: dict) -> None:
    proc = trained["before"]
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "no autoencoder weights at" in last and "autoencoder_path" in last and "model_autoencoder.pt" in last, last
    assert trained["written_before"] == []  # stopped before any run folder was made


@pytest.mark.slow
def test_both_stages_write_self_describing_weights_into_the_bundle(trained: dict) -> None:
    models = trained["bundle"] / "models"
    ae = json.loads((models / "model_autoencoder.json").read_text())
    ldm = json.loads((models / "model.json").read_text())
    factor = {"cxr_ldm": 8, "brain_mri_ldm": 4}[trained["name"]]
    assert ae["kind"] == "autoencoder" and ae["classes"] == CLASSES[trained["name"]] and ae["channels"] == 1
    assert ae["downsampling_factor"] == factor and ae["latent_channels"] == 3
    config = ldm["config"]
    assert config["route"] == "latent" and config["autoencoder_file"] == "model_autoencoder.pt"
    assert config["latent_shape"] == [3, 32 // factor, 32 // factor] and config["scale_factor"] > 0
    assert ldm["image_size"] == 32 and ldm["classes"] == CLASSES[trained["name"]]
    assert config["autoencoder_sha256"] == ae["weights_sha256"]
    run = trained["runs"] / trained["name"] / "ldm"
    assert (run / "latents_training.pt").is_file() and list((run / "grids").glob("*.png"))
    assert "encoding the training split" in trained["stage2"].stdout + trained["stage2"].stderr
    recon = trained["runs"] / f"{trained['name']}_autoencoder" / "ae" / "reconstructions"
    assert list(recon.glob("grid_epoch_*.png"))


@pytest.mark.slow
def test_inference_samples_decoded_images_with_no_overrides(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    monai_run("inference", trained["bundle"] / "configs" / "inference.yaml", "--per_class", "2",
              "--num_inference_steps", "3", "--output_dir", str(out), cwd=trained["elsewhere"])
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({line["class"] for line in lines}) == CLASSES[trained["name"]] and len(lines) == 4
    for line in lines:
        with Image.open(out / line["file"]) as im:
            assert im.size == (32, 32) and im.mode in ("L", "I;16")
    # the same seeds give the same images (the sampler is deterministic in latent space and so after decoding)
    again = tmp_path / "again"
    monai_run("inference", trained["bundle"] / "configs" / "inference.yaml", "--per_class", "2",
              "--num_inference_steps", "3", "--output_dir", str(again), cwd=trained["elsewhere"])
    first = lines[0]["file"]
    assert (out / first).read_bytes() == (again / first).read_bytes()


@pytest.mark.slow
def test_another_autoencoder_beside_the_diffusion_weights_is_refused(trained: dict, tmp_path: Path) -> None:
    bundle = tmp_path / trained["name"]
    shutil.copytree(trained["bundle"], bundle)
    stage1 = trained["runs"] / f"{trained['name']}_autoencoder" / "ae" / "checkpoints"
    # a different autoencoder file of the same architecture: the first checkpoint's weights, not the final EMA
    import torch

    state = torch.load(sorted(stage1.glob("*.pt"))[0], map_location="cpu", weights_only=False)["model"]
    torch.save({k: v.half() for k, v in state.items()}, bundle / "models" / "model_autoencoder.pt")
    proc = monai_run("inference", bundle / "configs" / "inference.yaml", "--per_class", "1", "--output_dir",
                     str(tmp_path / "s"), cwd=trained["elsewhere"], ok=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "is not the one the diffusion weights" in last and "model_autoencoder.pt" in last, last


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["cxr_ldm"], indirect=True)  # the code path is the same for brain_mri_ldm
def test_a_decoder_fine_tuned_on_a_frozen_encoder_serves_the_trained_diffusion_weights(trained: dict,
                                                                                     tmp_path: Path) -> None:
    """A sharper decoder for shipped diffusion weights: stage 1 again from the bundle's autoencoder with the encoder
    frozen (full images, no crops) is accepted by inference and changes the images; with the encoder trained too
    it is refused (other latents)."""
    bundle, configs = tmp_path / trained["name"], trained["bundle"] / "configs"
    shutil.copytree(trained["bundle"], bundle)
    start = trained["bundle"] / "models" / "model_autoencoder.pt"
    crop = COMMON_AE.index("--crop_size")
    full_images = [*COMMON_AE[:crop], *COMMON_AE[crop + 2:], "--crop_size", "0"]  # 0: whole images
    tuned = {}
    for frozen in (True, False):
        run_name = "frozen" if frozen else "whole"
        monai_run("training", configs / "train_autoencoder.yaml", "--dataset_dir", str(trained["data"]),
                  "--runs_dir", str(tmp_path / "runs"), "--run_name", run_name, "--init_weights", str(start),
                  "--train_encoder", str(not frozen), *full_images, *TINY_AE[trained["name"]], "--learning_rate",
                  "0.01", cwd=tmp_path)
        tuned[frozen] = tmp_path / "runs" / f"{trained['name']}_autoencoder" / run_name / "model_autoencoder"
    samples = {}
    for name, weights in (("shipped", start.with_suffix("")), ("frozen", tuned[True]), ("whole", tuned[False])):
        for suffix in (".pt", ".json"):
            shutil.copy(weights.with_suffix(suffix), bundle / "models" / f"model_autoencoder{suffix}")
        samples[name] = tmp_path / f"samples_{name}"
        proc = monai_run("inference", bundle / "configs" / "inference.yaml", "--per_class", "1",
                         "--num_inference_steps", "3", "--output_dir", str(samples[name]), cwd=tmp_path,
                         ok=name != "whole")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "is not the one the diffusion weights" in last, last
    first = json.loads((samples["shipped"] / "samples.jsonl").read_text().splitlines()[0])["file"]
    assert (samples["frozen"] / first).is_file()
    assert (samples["frozen"] / first).read_bytes() != (samples["shipped"] / first).read_bytes()

    proc = monai_run("training", configs / "train_autoencoder.yaml", "--dataset_dir", str(trained["data"]),
                     "--runs_dir", str(tmp_path / "runs"), "--run_name", "nothing", "--train_encoder", "False",
                     cwd=tmp_path, ok=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "train_encoder" in last and "init_weights" in last, last
    assert not (tmp_path / "runs" / f"{trained['name']}_autoencoder" / "nothing").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_bad_latent_settings_stop_before_training_with_one_line(name: str, shared_data: Path, tmp_path: Path) -> None:
    data = data_tree(shared_data, name, tmp_path / "data")
    configs = REPO / "bundles" / name / "configs"
    factor = {"cxr_ldm": 8, "brain_mri_ldm": 4}[name]
    proc = monai_run("training", configs / "train_autoencoder.yaml", "--dataset_dir", str(data), "--runs_dir",
                     str(tmp_path / "runs"), "--image_size", str(factor * 12 + 2), "--crop_size", "16", cwd=tmp_path,
                     ok=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "image_size" in last and "autoencoder_channels" in last, last
    assert f"factor {factor}" in last, last
    assert not list((tmp_path / "runs").rglob("checkpoint*.pt"))


@pytest.mark.slow
def test_a_latent_size_the_autoencoder_does_not_make_is_one_line(trained: dict, tmp_path: Path) -> None:
    proc = monai_run("training", trained["bundle"] / "configs" / "train_diffusion.yaml", "--dataset_dir",
                     str(trained["data"]), "--runs_dir", str(tmp_path / "runs"), "--image_size", "32",
                     "--latent_size", "5", *TINY_UNET, cwd=tmp_path, ok=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "latent_size" in last and "model_autoencoder.pt" in last, last
    assert not list((tmp_path / "runs").rglob("checkpoint*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["brain_mri_ldm"], indirect=True)  # the code path is the same for cxr_ldm
def test_the_medgen_command_trains_and_samples_a_latent_bundle(trained: dict, tmp_path: Path) -> None:
    medgen = [sys.executable, "-m", "medgen.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*medgen, "train", str(trained["bundle"])], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and "--config train_autoencoder, then --config train_diffusion" in proc.stderr
    out = tmp_path / "samples"
    proc = subprocess.run([*medgen, "sample", str(trained["bundle"]), "--per-class", "1", "--steps", "2",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
    proc = subprocess.run([*medgen, "zoo-export", str(trained["bundle"]), "--out", str(tmp_path / "zoo")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the zoo's latent layout (tests/bundles/test_zoo_ci.py)
    zoo = tmp_path / "zoo" / trained["name"]
    assert {p.name for p in (zoo / "models").iterdir()} == {"model.pt", "model_autoencoder.pt"}
    assert (zoo / "configs" / "train_diffusion.json").is_file() and (zoo / "configs" / "inference.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["brain_mri_ldm"], indirect=True)  # the code path is the same for cxr_ldm
def test_both_networks_export_to_torchscript_and_onnx(trained: dict, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medgen.cli", "export-model", str(trained["bundle"]), "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    for name in ("model.ts", "model.onnx", "model_decoder.ts", "model_decoder.onnx"):
        assert (tmp_path / name).is_file() and float(printed[f"{name} max_abs_diff"]) < 1e-3, printed
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model_decoder.onnx"), providers=["CPUExecutionProvider"])
    factor = {"cxr_ldm": 8, "brain_mri_ldm": 4}[trained["name"]]
    import numpy as np

    images = session.run(None, {"latent": np.zeros((1, 3, 32 // factor, 32 // factor), np.float32)})[0]
    assert images.shape == (1, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["brain_mri_ldm"], indirect=True)  # the code path is the same for cxr_ldm
def test_decoded_samples_are_evaluated_and_audited_in_pixel_space(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    monai_run("inference", trained["bundle"] / "configs" / "inference.yaml", "--per_class", "2",
              "--num_inference_steps", "3", "--output_dir", str(out), cwd=trained["elsewhere"])
    # the image size comes from the weights that made the samples; the datalist is the training run's
    datalist = trained["runs"] / trained["name"] / "ldm" / "datalist.json"
    monai_run("evaluate", trained["bundle"] / "configs" / "evaluate.yaml", "--samples_dir", str(out),
              "--datalist", str(datalist), "--output_dir", str(tmp_path / "evaluation"), "--classifier_size", "16",
              cwd=trained["elsewhere"])
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert (metrics["image_size"], metrics["n_generated"], metrics["classes"]) == (32, 4, CLASSES[trained["name"]])
    # the judge classifier trains and runs at classifier_size (what keeps a 256² evaluation short on a CPU)
    assert metrics["judge"]["image_size"] == 16, metrics["judge"]
    assert "fid" in json.dumps(metrics["generated"]) and "memorisation" in metrics
    assert (tmp_path / "evaluation" / "report.html").is_file()
    proc = subprocess.run([sys.executable, "-m", "medgen.cli", "audit", str(out), str(datalist), "--out",
                           str(tmp_path / "audit"), "--size", "32", "--features", "domain"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["n_generated"] == 4, list(audit)


@pytest.mark.slow
def test_the_shipped_cxr_weights_sample_256_pixel_radiographs_and_dicom(tmp_path: Path) -> None:
    """The model card's inference command right after install: cxr_ldm's shipped autoencoder and diffusion weights,
    256 x 256 grey PNGs and CR DICOM files marked as synthetic, from any folder."""
    pydicom = pytest.importorskip("pydicom")
    bundle = REPO / "bundles" / "cxr_ldm"
    models = bundle / "models"
    if not (models / "model.pt").is_file():
        pytest.fail("bundles/cxr_ldm/models/model.pt is missing: the bundle ships its weights")
    for name in ("model.pt", "model_autoencoder.pt"):
        assert (models / name).stat().st_size <= 25 * 2**20, name  # the repository's limit per file
    from medgen.latent import check_autoencoder_file

    # the autoencoder the diffusion weights were trained on, or that one with only its decoder fine-tuned
    check_autoencoder_file(models / "model_autoencoder.pt", json.loads((models / "model.json").read_text()),
                           models / "model.pt")
    out = tmp_path / "samples"
    monai_run("inference", bundle / "configs" / "inference.yaml", "--per_class", "1", "--num_inference_steps", "3",
              "--export_format", "dicom", "--output_dir", str(out), cwd=tmp_path)
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["class"] for line in lines] == ["NORMAL", "PNEUMONIA"]
    for line in lines:
        with Image.open(out / line["file"]) as im:
            assert im.size == (256, 256) and im.mode == "L"
            assert max(im.getextrema()) - min(im.getextrema()) > 50  # decoded radiographs, not a flat field
    files = sorted((out / "export_dicom").rglob("*.dcm"))
    assert len(files) == 2
    for path in files:
        ds = pydicom.dcmread(path)
        assert (ds.Modality, ds.Rows, ds.Columns, ds.SyntheticData) == ("CR", 256, 256, "YES")
    # the same samples in another format go to a folder of their own, the DICOM left as it was
    made = {p: p.stat().st_mtime_ns for p in files}
    monai_run("inference", bundle / "configs" / "inference.yaml", "--per_class", "1", "--num_inference_steps", "3",
              "--export_format", "png16", "--output_dir", str(out), cwd=tmp_path)
    assert len(list((out / "export_png16").rglob("*.png"))) == 2
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "export_dicom").rglob("*.dcm"))} == made


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["brain_mri_ldm"], indirect=True)  # cxr_ldm's train_diffusion.yaml is the same
def test_the_latent_loader_draws_a_rare_class_as_often_as_a_common_one_only_when_asked(trained: dict,
                                                                                         tmp_path: Path) -> None:
    import torch
    from monai.bundle import ConfigParser

    files = sorted(trained["data"].glob("Training/*/*.jp*g"))[:10]
    items = [{"image": str(f), "label": int(i >= 2)} for i, f in enumerate(files)]  # 2 rare, 8 common
    share = {}
    for balanced in (False, True):
        parser = ConfigParser()
        parser.read_config(str(trained["bundle"] / "configs" / "train_diffusion.yaml"))
        parser.update({"class_balanced": balanced, "image_size": 32, "output_dir": str(tmp_path / str(balanced)),
                       "datalist": {"classes": ["rare", "common"], "training": items}})
        loader = parser.get_parsed_content("train#dataloader")
        assert len(loader.dataset) == 10  # the latents of the ten images, encoded by the bundle's autoencoder
        torch.manual_seed(0)
        drawn = [loader.dataset.data[i]["label"] for _ in range(200) for i in loader.sampler]
        share[balanced] = drawn.count(0) / len(drawn)
    assert share[False] == pytest.approx(0.2)  # shuffled epochs: each latent once per epoch
    assert 0.45 < share[True] < 0.55


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["brain_mri_ldm"], indirect=True)
def test_multi_gpu_latent_training_draws_classes_evenly_across_ranks(trained: dict, shared_data: Path,
                                                                      tmp_path: Path) -> None:
    """torchrun, 2 gloo processes, train_diffusion.yaml + multi_gpu_train.yaml with --class_balanced True: each rank
    draws its share with MONAI's DistributedWeightedRandomSampler and the run writes its weights."""
    two_each = {"notumor": 2, "glioma": 2, "meningioma": 2, "pituitary": 2}  # 2 notumor against 6 tumor per split
    data = data_tree(shared_data, "brain_mri_ldm", tmp_path / "data", {"Training": two_each, "Testing": two_each})
    configs = trained["bundle"] / "configs"
    config_files = f"['{configs / 'train_diffusion.yaml'}','{configs / 'multi_gpu_train.yaml'}']"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_DATA_DIR": "/nonexistent-so-only-given-data-is-read"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "monai.bundle", "run", "training", "--config_file", config_files, "--dataset_dir",
                           str(data), "--runs_dir", str(tmp_path / "runs"), "--run_name", "ddp", "--image_size", "32",
                           "--class_balanced", "True", *TINY_UNET],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # 8 training slices less the 10% validation split, merged into notumor (label 0) and tumor (label 1)
    lines = [line for line in out.splitlines() if "class-balanced drawing:" in line]
    assert len(lines) == 2 and all("each label 1/2 of the draws" in line for line in lines), lines
    assert (tmp_path / "runs" / "brain_mri_ldm" / "ddp" / "model.pt").is_file()
