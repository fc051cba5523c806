"""Config validation before any work: unknown override keys, types and ranges, class lists, `--help` keys.

Through `medgen train/sample` in-process and through `python -m monai.bundle run` (the bundle's first run-list
item, medgen.config.check_config). Every bad value ends with one line naming the key and the value, no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import monai.bundle.workflows  # noqa: F401  (imported here: MONAI's loggers bind the stream of the importing test)
import pytest

from medgen.bundles import parse_overrides
from medgen.cli import main
from medgen.config import NOT_KEYS, SPEC, _computed, _plain

REPO = Path(__file__).resolve().parent.parent
BUNDLES = ("cxr_ddpm", "brain_mri_score", "blood_cells_ddpm")

BAD = [
    (["train", "cxr_ddpm", "--max_epoch", "1"], "unknown config key 'max_epoch' (did you mean 'max_epochs'?)"),
    (["train", "brain_mri_score", "--learning-rat", "0.1"],
     "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    (["train", "cxr_ddpm", "--train#trainer#max_epoch", "2"],
     "unknown config key 'train#trainer#max_epoch' (did you mean 'train#trainer#max_epochs'?)"),
    (["train", "cxr_ddpm", "--image_size", "30"],
     "config key 'image_size' must be a multiple of 8 (the network halves the image 3 times: len(unet_channels) - 1)"
     ", got 30; try 32"),
    (["train", "cxr_ddpm", "--unet_channels", "[8, 16]", "--attention_levels", "[false, false]", "--norm_num_groups",
      "8"],
     "config key 'unet_channels' must be multiples of network_def#num_head_channels (32) at the attention levels "
     "and the last level, got [8, 16]; or pass --network_def#num_head_channels 16"),
    (["train", "cxr_ddpm", "--learning_rate", "abc"],
     "config key 'learning_rate' must be a finite number > 0, got 'abc'"),
    (["train", "cxr_ddpm", "--window", "[40]"],
     "config key 'window' must be [centre, width] with width > 0, or null, got [40]"),
    (["train", "cxr_ddpm", "--window", "[40, 0]"],
     "config key 'window' must be [centre, width] with width > 0, or null, got [40, 0]"),
    (["train", "cxr_ddpm", "--label_dropout", "1.5"], "config key 'label_dropout' must be a number in [0, 1), got 1.5"),
    (["train", "brain_mri_score", "--cache-rate", "2"], "config key 'cache_rate' must be a number in [0, 1], got 2"),
    (["train", "cxr_ddpm", "--max-epochs", "0"], "config key 'max_epochs' must be a positive integer, got 0"),
    (["train", "cxr_ddpm", "--batch_size", "auto"],
     "config key 'batch_size' must be a positive integer for training (auto is for sampling), got 'auto'"),
    (["train", "cxr_ddpm", "--time_limit", "0"], "config key 'time_limit' must be a finite number > 0, or null, got 0"),
    (["train", "cxr_ddpm", "--dataset-dir", "/nonexistent/medgen-data"], "data directory /nonexistent/medgen-data does "
     "not exist; put the data set there, pass --dataset-dir <dir>, or set MEDGEN_DATA_DIR to the folder that holds "
     "chest_xray_kermany_224/ (see README.md, 'Data')"),
    (["sample", "cxr_ddpm", "--steps", "0"],
     "config key 'num_inference_steps' (--steps) must be a positive integer, got 0"),
    (["sample", "brain_mri_score", "--num_inference_steps", "0"],
     "config key 'num_inference_steps' must be a positive integer, got 0"),
    (["sample", "brain_mri_score", "--grid_inference_steps", "3"],
     "unknown config key 'grid_inference_steps' (did you mean 'num_inference_steps'?)"),
    (["sample", "brain_mri_score", "--colour", "3"],
     "unknown config key 'colour' (`medgen train BUNDLE --help` / `medgen sample BUNDLE --help` "
     "list the keys)"),
    (["sample", "cxr_ddpm", "--per-class", "0"],
     "config key 'per_class' (--per-class) must be a positive integer, got 0"),
    (["sample", "cxr_ddpm", "--guidance", "nan"],
     "config key 'guidance_scale' (--guidance) must be a finite number >= 0, got nan"),
    (["sample", "cxr_ddpm", "--batch_size", "0"],
     "config key 'batch_size' (--batch-size) must be a positive integer, or auto, got 0"),
    (["sample", "brain_mri_score", "--sampler", "ddim"],
     "config key 'sampler' (--sampler) must be one of als, dpmpp2m, pc, reverse, got 'ddim'"),
    (["train", "brain_mri_score", "--grid_sampler", "ddim"],
     "config key 'grid_sampler' must be one of als, dpmpp2m, pc, reverse, got 'ddim'"),
    (["sample", "cxr_ddpm", "--sampler", "pc"],
     "config key 'sampler' (--sampler) must be one of ddim, ddpm, dpmpp1, dpmpp2m, got 'pc'"),
    (["sample", "cxr_ddpm", "--shard", "3/2"],
     "config key 'shard' (--shard) must be \"i/n\" with 0 <= i < n (e.g. \"0/4\"), or null, got '3/2'"),
    (["sample", "cxr_ddpm", "--quality-filter", "/nonexistent/gate.npz"],
     "config key 'quality_gate' (--quality-filter) must be an existing file, or null, got '/nonexistent/gate.npz'"),
]


@pytest.mark.parametrize("argv,line", BAD, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD])
def test_bad_override_stops_with_one_line(argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(logging.root, "handlers", [])  # main's logging.basicConfig writes to this test's stderr
    assert main([*argv, "--output_dir", str(tmp_path / "out")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"medgen: error: {line}"


def test_every_user_facing_key_has_a_rule():
    """A plain top-level key of any bundle config (what `--help` lists) must have a check in medgen.config.SPEC."""
    import yaml

    for bundle in BUNDLES:
        for path in sorted((REPO / "bundles" / bundle / "configs").glob("*.yaml")):
            config = yaml.safe_load(path.read_text())
            missing = [k for k, v in config.items()
                       if k not in SPEC and k not in NOT_KEYS and "#" not in k and not _computed(v) and _plain(v)]
            assert not missing, f"{path}: no rule in medgen.config.SPEC for {missing}"


def test_class_lists_stay_text():
    parsed = parse_overrides(["--classes", "no,yes", "--class-names", "[no, yes]", "--class_map", "{a: [off, 1]}",
                              "--source_classes=on", "--max-epochs", "3", "window=[40, 400]"])
    assert parsed == {"classes": ["no", "yes"], "class_names": ["no", "yes"], "class_map": {"a": ["off", "1"]},
                      "source_classes": ["on"], "max_epochs": 3, "window": [40, 400]}


def test_help_lists_the_bundle_keys(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "cxr_ddpm", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "keys of cxr_ddpm (configs/train.yaml)" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("--label-dropout "))
    assert "0.1" in line and "probability of the null class, for classifier-free guidance" in line
    assert any(x.strip().startswith("--max-epochs 50") for x in out.splitlines())
    assert "_target_" not in out  # components are not keys for the command line
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    for bundle in BUNDLES:
        assert f"keys of {bundle} (configs/inference.yaml)" in out
    assert any(x.strip().startswith("--num-inference-steps 20 ") and "noise levels visited" in x  # brain_mri_score
               for x in out.splitlines())


def _monai_run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGEN_DATA_DIR": "/nonexistent-data-so-nothing-trains"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_monai_bundle_run_rejects_a_typo():
    """`python -m monai.bundle run` takes any key; the bundle's first run-list item catches the typo."""
    proc = _monai_run("training", "--config_file", "bundles/cxr_ddpm/configs/train.yaml", "--max_epoch", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "medgen: error: unknown config key 'max_epoch' (did you mean 'max_epochs'?)"


MONAI_BAD = [
    (["training", "--config_file", "bundles/brain_mri_score/configs/train.yaml", "--image_size", "60"],
     "config key 'image_size' must be a multiple of 8 (the network halves the image 3 times: len(unet_channels) - 1)"
     ", got 60; try 64"),
    (["training", "--config_file", "bundles/cxr_ddpm/configs/train.yaml", "--classes", "[True,False]"],
     "config key 'classes' must be a list of class names, not booleans (YAML and the command line read "
     "no/yes/off/on/false/true as booleans: quote class names, e.g. --classes no,yes or \"['no', 'yes']\"), "
     "got [True, False]"),
    (["inference", "--config_file", "bundles/cxr_ddpm/configs/inference.yaml", "--num_inference_steps", "0"],
     "config key 'num_inference_steps' must be a positive integer, got 0"),
    (["inference", "--config_file", "bundles/brain_mri_score/configs/inference.yaml", "--per_clas", "2"],
     "unknown config key 'per_clas' (did you mean 'per_class'?)"),
    (["training", "--config_file", "bundles/brain_mri_ldm/configs/train_autoencoder.yaml", "--crop_size", "256"],
     "config key 'crop_size' must be at most image_size (128), or 0 for whole images, got 256"),
    (["training", "--config_file", "bundles/cxr_ldm/configs/train_autoencoder.yaml", "--train_encoder", "False"],
     "config key 'train_encoder' false needs init_weights: a frozen encoder must come from trained autoencoder "
     "weights (--init_weights <model_autoencoder.pt>), got False"),
    (["training", "--config_file", "bundles/cxr_ldm/configs/train_autoencoder.yaml", "--crop_size", "None"],
     "config key 'crop_size': --crop_size None is dropped by monai.bundle (it ignores None overrides), so the "
     "config's 64 would be used; give the key's documented 'off' value, or null in a config file passed after the "
     "bundle's (--config_file \"['train.yaml', 'mine.yaml']\")"),
    (["training", "--config_file", "bundles/cxr_ddpm/configs/train.yaml", "--network_def#num_head_channels", "None"],
     "config key 'network_def#num_head_channels': --network_def#num_head_channels None is dropped by monai.bundle (it "
     "ignores None overrides), so the config's 32 would be used; give the key's documented 'off' value, or null in a "
     "config file passed after the bundle's (--config_file \"['train.yaml', 'mine.yaml']\")"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,line", MONAI_BAD, ids=[a[-2] for a, _ in MONAI_BAD])
def test_monai_bundle_run_checks_values(args, line):
    proc = _monai_run(*args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"medgen: error: {line}"


@pytest.mark.slow
def test_classes_named_no_and_yes_train(small_cxr_tree, tmp_path):
    """`--classes no,yes` (folders no/ and yes/) trains; the datalist keeps the names as text."""
    tree = tmp_path / "noyes"
    for src, dst in (("NORMAL", "no"), ("PNEUMONIA", "yes")):
        (tree / dst).mkdir(parents=True)
        for f in sorted((small_cxr_tree / src).glob("*.jpeg"))[:4]:
            (tree / dst / f.name).symlink_to(f.resolve())
    out = tmp_path / "run"
    rc = main(["train", "cxr_ddpm", "--dataset-dir", str(tree), "--classes", "no,yes", "--output_dir", str(out),
               "--image_size", "32", "--unet_channels", "[8, 16]", "--attention_levels", "[false, false]",
               "--norm_num_groups", "8", "--network_def#num_head_channels", "8", "--max-epochs", "1",
               "--batch_size", "2", "--num_workers", "0",
               "--sample_interval", "100", "--checkpoint_interval", "1", "--ema_warmup_iters", "1"])
    assert rc == 0
    assert json.loads((out / "datalist.json").read_text())["classes"] == ["no", "yes"]
