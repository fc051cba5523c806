"""`medgen zoo-export` writes bundles that the MONAI Model Zoo's own CI scripts accept, and that run without medgen.

The zoo's scripts are unmodified copies (tests/fixtures/model_zoo_ci, Apache-2.0). The zoo's full mode is run with
exactly the exclusions its ci/bundle_custom_data.py grants its generative bundles (brats_mri_generative_diffusion,
brats_mri_axial_slices_generative_diffusion): exclude_verify_shape_list and exclude_verify_torchscript_list.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ZOO_CI = REPO / "tests" / "fixtures" / "model_zoo_ci"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
# a pixel bundle without shipped weights is exported with stand-in weights (see `sources`); latent bundles (two
# stages) are exported with their shipped autoencoder and diffusion weights
LATENT = [name for name in BUNDLES if (REPO / "bundles" / name / "configs" / "train_diffusion.yaml").is_file()]
EXPORTABLE = [name for name in BUNDLES if (REPO / "bundles" / name / "configs" / "train.yaml").is_file()
              or (name in LATENT and (REPO / "bundles" / name / "models" / "model.pt").is_file())]
SHIPPED = [name for name in EXPORTABLE if (REPO / "bundles" / name / "models" / "model.pt").is_file()]
DATA = Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"cxr_ddpm": "chest_xray_kermany_224", "brain_mri_score": "brain_tumor_mri_224",
            "blood_cells_ddpm": "blood_cells_pbc", "cxr_ldm": "chest_xray_kermany_224",
            "brain_mri_ldm": "brain_tumor_mri_224"}
TIMEOUT = 1800

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SCHEMA.is_file(), reason=f"zoo metadata schema not found at {SCHEMA}")]


def train_file(name: str) -> str:
    """The exported training config: train.json, or train_diffusion.json for a latent bundle (as the zoo's)."""
    return "train_diffusion.json" if name in LATENT else "train.json"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT)


def stand_in(name: str, tmp: Path) -> Path:
    """A copy of a bundle that ships no weights, with weights from a one-epoch training on 4 real images per class
    at 32 px (its real configs, `--export_to_bundle True`), so its exported form is checked all the same."""
    copy = tmp / "stand_in" / name
    shutil.copytree(REPO / "bundles" / name, copy, ignore=shutil.ignore_patterns("runs"))
    tiny = ["--image_size", "32", "--unet_channels", "[16,32,32]", "--attention_levels", "[False,False,True]",
            "--num_res_blocks", "1", "--norm_num_groups", "8", "--max_items_per_class", "4", "--batch_size", "8",
            "--max_epochs", "1", "--samples_per_class_in_grid", "1", "--num_workers", "0"]
    tiny += ["--sigma_max", "40", "--grid_inference_steps", "2"] if name == "brain_mri_score" else []
    done = run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                str(copy / "configs" / "train.yaml"), "--dataset_dir", str(DATA / DATASETS[name]),
                "--export_to_bundle", "True", "--runs_dir", str(tmp / "runs"), *tiny], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return copy


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bundle exported with `medgen zoo-export`, laid out as the zoo's models/ folder: the schema in
    <bundle>/eval/schema.json (what the zoo's prepare_schema.py downloads) and a model_info.json with no entry."""
    tmp = tmp_path_factory.mktemp("zoo")
    out = tmp / "models"
    sources = [str(REPO / "bundles" / name) if (REPO / "bundles" / name / "models" / "model.pt").is_file()
               else str(stand_in(name, tmp)) for name in EXPORTABLE]
    done = run([sys.executable, "-m", "medgen.cli", "zoo-export", *sources, "--out", str(out)], cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in EXPORTABLE:
        (out / name / "eval").mkdir()
        shutil.copy(SCHEMA, out / name / "eval" / "schema.json")
    (out / "model_info.json").write_text("{}")
    return out


@pytest.fixture(scope="module")
def zoo_ci_with_generative_exclusions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's CI scripts with our bundles added to the two lists its generative bundles are on."""
    ci = tmp_path_factory.mktemp("ci")
    for script in ZOO_CI.glob("*.py"):
        shutil.copy(script, ci / script.name)
    with open(ci / "bundle_custom_data.py", "a") as f:
        f.write(f"\nexclude_verify_shape_list += {EXPORTABLE!r}\nexclude_verify_torchscript_list += {EXPORTABLE!r}\n")
    return ci


def zoo_verify(ci: Path, models: Path, name: str, mode: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ci / "verify_bundle.py"), "-b", name, "-p", str(models), "-m", mode], cwd=cwd)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_zoo_full_mode_passes_with_the_generative_exclusions(models: Path, name: str, tmp_path: Path,
                                                                   zoo_ci_with_generative_exclusions: Path) -> None:
    """The full mode runs every check of the min mode first (directory, version and changelog, metadata format),
    with the same code: the two lists the exclusions add are read only after them, so this run also stands for the
    zoo's unmodified min mode."""
    done = zoo_verify(zoo_ci_with_generative_exclusions, models, name, "full", tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "version and changelog are verified correctly." in done.stdout
    assert "metadata format is verified correctly." in done.stdout
    assert f"skip verifying the data shape of bundle: {name}." in done.stdout
    assert f"bundle: {name} does not support torchscript, skip verifying." in done.stdout


@pytest.mark.parametrize("name", EXPORTABLE)
def test_medgen_verify_fails_exactly_where_the_zoo_full_mode_fails(models: Path, name: str, tmp_path: Path) -> None:
    zoo = zoo_verify(ZOO_CI, models, name, "full", tmp_path)
    assert zoo.returncode != 0 and "missing 1 required positional argument: 'timesteps'" in zoo.stderr
    strict = run([sys.executable, "-m", "medgen.cli", "verify", str(models / name)], cwd=tmp_path)
    assert strict.returncode == 1, strict.stdout
    assert "[error] shape: data shape fails as in the zoo's full mode" in strict.stdout
    assert "missing 1 required positional argument: 'timesteps'" in strict.stdout
    assert "[error] torchscript: TorchScript fails" in strict.stdout
    granted = run([sys.executable, "-m", "medgen.cli", "verify", str(models / name), "--zoo-exclusions",
                   "generative"], cwd=tmp_path)
    assert granted.returncode == 0, granted.stdout
    assert "verified in the zoo's full mode (0 error(s)" in granted.stdout and "shape, torchscript" in granted.stdout
    assert "configs/train.*" not in granted.stdout  # a latent export's train_diffusion.json is its training config


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_zoo_requirements_step_names_only_what_is_installed_from_an_index(models: Path, name: str,
                                                                               tmp_path: Path) -> None:
    done = run([sys.executable, str(ZOO_CI / "get_bundle_requirements.py"), "-b", name, "-p", str(models)],
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / done.stdout.strip()).read_text().split()
    pins = dict(line.split("==") for line in lines)
    assert "medgen" not in pins and {"monai", "torch", "numpy"} <= set(pins)
    for package, version in pins.items():  # what this test run itself uses, installed from PyPI by .ci/run
        assert importlib.metadata.version(package).split("+")[0] == version, package


@pytest.fixture()
def no_medgen(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import medgen` fails, as on a machine with MONAI and the listed packages only."""
    stub = tmp_path / "stub" / "medgen"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('medgen is not installed here')\n")
    return {"PYTHONPATH": str(stub.parent)}


@pytest.mark.parametrize("name", EXPORTABLE)
def test_monai_bundle_load_returns_the_network_without_medgen(models: Path, name: str, tmp_path: Path,
                                                              no_medgen: dict[str, str]) -> None:
    code = ("import monai, sys\n"
            f"net = monai.bundle.load(name={name!r}, bundle_dir={str(models)!r}, workflow_type='inference')\n"
            "print(type(net).__name__, sum(p.numel() for p in net.parameters()), 'medgen' in sys.modules)\n")
    done = run([sys.executable, "-c", code], cwd=tmp_path, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, params, imported = done.stdout.split()[-3:]
    import torch

    weights = torch.load(models / name / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert kind == "DiffusionModelUNet" and imported == "False"
    assert int(params) == sum(v.numel() for v in weights.values())  # every weight loaded, nothing else


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_exported_inference_runs_from_any_folder_without_medgen(models: Path, name: str, tmp_path: Path,
                                                                    no_medgen: dict[str, str]) -> None:
    bundle = tmp_path / name
    shutil.copytree(models / name, bundle)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    steps = "2" if name != "brain_mri_score" else "3"
    done = run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" /
                "inference.json"), "--per_class", "1", "--num_inference_steps", steps, "--batch_size", "2"],
               cwd=elsewhere, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (bundle / "samples" / "samples.jsonl").read_text().splitlines()]
    exported = json.loads((bundle / "configs" / "inference.json").read_text())
    assert [line["class"] for line in lines] == exported["classes"] and all(line["synthetic"] for line in lines)
    # it samples as the medgen bundle does: the sampler, steps and guidance its model card's figures were measured on
    source = yaml.safe_load((REPO / "bundles" / name / "configs" / "inference.yaml").read_text())
    keys = ("sampler", "num_inference_steps", "guidance_scale")
    assert {k: exported[k] for k in keys} == {k: source[k] for k in keys}
    assert f", {source['num_inference_steps']} " in (bundle / "docs" / "README.md").read_text()
    # a bundle that ships an autoguidance guide for its weights exports it and guides with it
    guided = (REPO / "bundles" / name / "models" / "model_guide.pt").is_file()
    assert ("guide_network" in exported["pipeline"]) == guided == (bundle / "models" / "model_guide.pt").is_file()
    assert all((bundle / "samples" / line["image"]).stat().st_size > 100 for line in lines)
    assert not (elsewhere / "samples").exists()  # bundle_root is the config file's folder, not the current one
    # the same image as the medgen bundle makes from the same seed, class and settings (its first class, seed 0)
    source_bundle = REPO / "bundles" / name if name in SHIPPED else None
    if source_bundle is not None:
        ours = tmp_path / "medgen_samples"
        done = run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                    str(source_bundle / "configs" / "inference.yaml"), "--per_class", "1", "--seed", "0",
                    "--num_inference_steps", steps, "--output_dir", str(ours)], cwd=elsewhere)
        assert done.returncode == 0, done.stderr[-3000:]
        first = exported["classes"][0]
        from PIL import Image

        exported_image = Image.open(bundle / "samples" / first / "000000.png")
        medgen_image = Image.open(ours / first / "000000.png")
        assert exported_image.tobytes() == medgen_image.tobytes(), name


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_exported_training_runs_on_real_data_without_medgen(models: Path, name: str, tmp_path: Path,
                                                                no_medgen: dict[str, str]) -> None:
    dataset = DATA / DATASETS[name]
    bundle = tmp_path / name
    shutil.copytree(models / name, bundle)
    tiny = ["--image_size", "32", "--network_def#channels", "[8,16]", "--network_def#attention_levels",
            "[false,true]", "--network_def#num_res_blocks", "1", "--network_def#norm_num_groups", "8",
            "--network_def#num_head_channels", "8"]
    config = str(bundle / "configs" / train_file(name))
    done = run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(dataset),
                "--max_items_per_class", "4", "--max_epochs", "1", "--batch_size", "4", *tiny],
               cwd=tmp_path, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((bundle / "runs" / "checkpoints").glob("checkpoint_final_iteration=*.pt"))
    assert list((bundle / "runs" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(("processes", "balanced"), [(1, True), (2, True), (2, False)])
def test_the_exported_training_draws_a_rare_class_as_often_as_a_common_one(models: Path, processes: int,
                                                                          balanced: bool, tmp_path: Path,
                                                                          no_medgen: dict[str, str]) -> None:
    """`--class_balanced True` works in the exported cxr_ddpm (medgen's train.yaml key), in one process and under
    torchrun with multi_gpu_train.json: 2 NORMAL against 6 PNEUMONIA images, each class half of the draws; false
    keeps MONAI's DistributedSampler under torchrun."""
    dataset = tmp_path / "kermany"
    for folder, count in (("NORMAL", 2), ("PNEUMONIA", 6)):
        (dataset / folder).mkdir(parents=True)
        for image in sorted((DATA / DATASETS["cxr_ddpm"] / "train" / folder).iterdir())[:count]:
            (dataset / folder / image.name).symlink_to(image)
    bundle = tmp_path / "cxr_ddpm"
    shutil.copytree(models / "cxr_ddpm", bundle)
    config = json.loads((bundle / "configs" / "train.json").read_text())
    assert config["class_balanced"] is False and config["train"]["dataloader"]["shuffle"] == "$not @class_balanced"
    assert "`--class_balanced True` draws every class equally often" in (bundle / "docs" / "README.md").read_text()
    tiny = ["--image_size", "32", "--network_def#channels", "[8,16]", "--network_def#attention_levels",
            "[false,true]", "--network_def#num_res_blocks", "1", "--network_def#norm_num_groups", "8",
            "--network_def#num_head_channels", "8"]
    configs = str(bundle / "configs" / "train.json")
    launch = [sys.executable, "-m", "monai.bundle", "run"]
    if processes > 1:
        configs = f"['{configs}','{bundle / 'configs' / 'multi_gpu_train.json'}']"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                  "-m", "monai.bundle", "run"]
    done = run([*launch, "--config_file", configs, "--dataset_dir", str(dataset), "--class_balanced", str(balanced),
                "--max_epochs", "1", "--batch_size", "4", *tiny], cwd=tmp_path,
               env={**no_medgen, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    drawing = "class-balanced drawing: 8 items of labels {0: 2, 1: 6}, each label 1/2 of the draws"
    assert (done.stderr + done.stdout).count(drawing) == (processes if balanced else 0)
    # 8 draws an epoch, split between the ranks (MONAI's Distributed(Weighted Random)Sampler), in batches of 4
    assert list((bundle / "runs" / "checkpoints").glob(f"checkpoint_final_iteration={2 // processes}.pt"))


def test_zoo_export_refuses_to_overwrite_and_to_export_without_weights(tmp_path: Path) -> None:
    (tmp_path / "cxr_ddpm").mkdir()
    done = run([sys.executable, "-m", "medgen.cli", "zoo-export", "cxr_ddpm", "--out", str(tmp_path)], cwd=REPO)
    assert done.returncode == 2 and "exists; pass --force" in done.stdout and not any((tmp_path / "cxr_ddpm").iterdir())
    bare = tmp_path / "bare"
    shutil.copytree(REPO / "bundles" / "cxr_ddpm", bare, ignore=shutil.ignore_patterns("*.pt", "model.json", "runs"))
    done = run([sys.executable, "-m", "medgen.cli", "zoo-export", str(bare), "--out", str(tmp_path / "out")],
               cwd=REPO)
    assert done.returncode == 2 and "no weights to export; train the bundle first" in done.stdout
    assert not (tmp_path / "out" / "bare").exists()


def test_zoo_export_refuses_a_latent_bundle_whose_autoencoder_is_not_the_one_its_weights_were_trained_on(
        tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(REPO / "bundles" / "cxr_ldm", mixed, ignore=shutil.ignore_patterns("runs"))
    for suffix in (".pt", ".json"):
        shutil.copy(REPO / "bundles" / "brain_mri_ldm" / "models" / f"model_autoencoder{suffix}",
                    mixed / "models" / f"model_autoencoder{suffix}")
    done = run([sys.executable, "-m", "medgen.cli", "zoo-export", str(mixed), "--out", str(tmp_path / "out")],
               cwd=REPO)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.count("\n") == 1 and "model_autoencoder.pt (config key 'autoencoder_file'" in done.stdout
    assert "is not the one the diffusion weights" in done.stdout
    assert not (tmp_path / "out" / "mixed").exists()


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_exported_folder_has_a_folder_s_usual_permissions(models: Path, name: str, tmp_path: Path) -> None:
    """Others who may read the export folder (a shared model store, the zoo's CI user) can read the bundle."""
    usual = tmp_path / "usual"
    usual.mkdir()
    assert (models / name).stat().st_mode & 0o777 == usual.stat().st_mode & 0o777


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_exported_training_prepares_images_as_medgen_does(models: Path, name: str, tmp_path: Path,
                                                             no_medgen: dict[str, str]) -> None:
    """Fine-tuning the exported weights sees the images they were trained on: same orientation (rows first, not
    MONAI's transposed PIL default), resize mode, grey conversion and range as medgen's training transforms."""
    import torch
    from monai.bundle import ConfigParser

    from medgen.data.transforms import diffusion_transforms
    from medgen.zoo_scripts.data import folder_datalist

    exported = ConfigParser()
    exported.read_config(str(models / name / "configs" / train_file(name)))
    items = folder_datalist(str(DATA / DATASETS[name]), exported["classes"], exported["class_map"], 2)
    script = tmp_path / "prepare.py"  # the exported transforms, run where only MONAI and the bundle exist
    script.write_text(f"""
import sys, torch
from monai.bundle import ConfigParser
bundle = {str(models / name)!r}
sys.path.insert(0, bundle)
parser = ConfigParser()
parser.read_config(bundle + "/configs/{train_file(name)}")
parser["bundle_root"] = bundle
prepare = parser.get_parsed_content("train#preprocessing")
torch.save([torch.as_tensor(prepare(dict(item))["image"]) for item in {items!r}], {str(tmp_path / "out.pt")!r})
""")
    done = run([sys.executable, str(script)], cwd=tmp_path, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    source = ConfigParser()  # the stage that reads image files: train.yaml, or a latent bundle's autoencoder stage
    source.read_config(str(REPO / "bundles" / name / "configs" / ("train_autoencoder.yaml" if name in LATENT
                                                                   else "train.yaml")))
    medgen = diffusion_transforms(exported["image_size"], exported["channels"], resize_mode=source["resize_mode"])
    for item, ours in zip(items, torch.load(tmp_path / "out.pt", weights_only=True)):
        theirs = torch.as_tensor(medgen(dict(item))["image"]).float()
        assert ours.shape == theirs.shape, item["image"]
        assert torch.allclose(ours.float(), theirs, atol=0.02), (item["image"], (ours - theirs).abs().max())


@pytest.mark.parametrize("name", [name for name in LATENT if name in EXPORTABLE])
def test_the_exported_latent_training_continues_the_shipped_weights_at_their_trained_loss(
        models: Path, name: str, no_medgen: dict[str, str], tmp_path: Path) -> None:
    """train_diffusion.json encodes real images with the exported autoencoder into the latents the diffusion weights
    were trained on: their loss there is the trained level (images prepared any other way, e.g. transposed, score
    far worse), a fresh network's is about 1."""
    script = tmp_path / "loss.py"
    script.write_text(f"""
import sys, torch, monai
from monai.bundle import ConfigParser
bundle = {str(models / name)!r}
sys.path.insert(0, bundle)
parser = ConfigParser()
parser.read_config(bundle + "/configs/train_diffusion.json")
parser.update({{"bundle_root": bundle, "dataset_dir": {str(DATA / DATASETS[name])!r}, "max_items_per_class": 32,
               "num_workers": 0, "batch_size": 16}})
parser.get_parsed_content("load_autoencoder")
network = parser.get_parsed_content("network")
for trained in (False, True):
    if trained:
        network.load_state_dict(torch.load(bundle + "/models/model.pt", weights_only=True))
    monai.utils.set_determinism(0)
    losses = []
    for batch in parser.get_parsed_content("train#dataloader"):
        inputs, target, args, kwargs = parser.get_parsed_content("train#prepare_batch")(batch, "cpu")
        with torch.no_grad():
            out = parser.get_parsed_content("train#inferer")(inputs, network, *args, **kwargs)
        losses.append(torch.nn.functional.mse_loss(out.float(), target.float()).item())
    print(sum(losses) / len(losses))
""")
    done = run([sys.executable, str(script)], cwd=tmp_path, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh, trained = map(float, done.stdout.split()[-2:])
    assert fresh > 0.8 and trained < 0.35 * fresh, (fresh, trained)


@pytest.mark.parametrize("name", ["brain_mri_ldm"])  # cxr_ldm's export is made by the same code
def test_the_exported_latent_training_draws_a_rare_class_as_often_as_a_common_one(
        models: Path, name: str, no_medgen: dict[str, str], tmp_path: Path) -> None:
    """train_diffusion.json keeps class_balanced: 2 notumor against 6 tumor slices (2 per tumour folder), each class
    half of the draws when true, its share of the slices when false; multi_gpu_train_diffusion.json draws with MONAI's
    DistributedWeightedRandomSampler when true."""
    dataset = tmp_path / "brain"
    for folder in ("notumor", "glioma", "meningioma", "pituitary"):
        (dataset / "Training" / folder).mkdir(parents=True)
        for image in sorted((DATA / DATASETS[name] / "Training" / folder).iterdir())[:2]:
            (dataset / "Training" / folder / image.name).symlink_to(image)
    multi = json.loads((models / name / "configs" / "multi_gpu_train_diffusion.json").read_text())
    assert "class_balanced_sampler(@train#dataset, distributed=True) if @class_balanced" in multi["train#sampler"]
    script = tmp_path / "draws.py"
    script.write_text(f"""
import sys, torch
from monai.bundle import ConfigParser
bundle = {str(models / name)!r}
sys.path.insert(0, bundle)
for balanced in (False, True):
    parser = ConfigParser()
    parser.read_config(bundle + "/configs/train_diffusion.json")
    parser.update({{"bundle_root": bundle, "dataset_dir": {str(dataset)!r}, "num_workers": 0,
                   "class_balanced": balanced}})
    loader = parser.get_parsed_content("train#dataloader")
    labels = [int(item["label"]) for item in loader.dataset.data]
    torch.manual_seed(0)
    drawn = [labels[i] for _ in range(300) for i in loader.sampler]
    print(labels.count(0) / len(labels), drawn.count(0) / len(drawn))
""")
    done = run([sys.executable, str(script)], cwd=tmp_path, env=no_medgen)
    assert done.returncode == 0, done.stderr[-3000:]
    (share, drawn_false), (_, drawn_true) = (map(float, line.split()) for line in done.stdout.split("\n")[-3:-1])
    assert 0.2 <= share <= 0.3 and drawn_false == pytest.approx(share)  # notumor: 2 of the 8 slices (less validation)
    assert 0.45 < drawn_true < 0.55
