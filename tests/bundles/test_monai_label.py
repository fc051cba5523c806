"""MONAI Label's bundle loader on our bundles: what ``BundleInferTask`` and ``BundleTrainTask`` read of a bundle.

MONAI Label is not installed next to medgen: monailabel 0.8.5 (the newest on PyPI) needs ``pydicom-seg`` 0.4.1,
which needs numpy < 2 and pydicom < 3, plus torchvision, sam2, itk, openslide and MLflow (docs/monai_label.md).
So ``load_like_monai_label`` repeats, step by step, what monailabel 0.8.5 does with a bundle folder:
``monailabel/tasks/infer/bundle.py`` (``BundleConstants``, ``BundleInferTask.__init__``, ``_load_bundle_config``,
``_update_device``, ``inferer``, ``pre_transforms``, ``post_transforms``), ``monailabel/tasks/infer/basic_infer.py``
(``_get_network``: ``torch.load`` then ``load_state_dict`` of ``checkpoint.get("model", checkpoint)``) and
``monailabel/tasks/train/bundle.py`` (``BundleTrainTask.__init__`` and the config ids ``__call__`` overrides).
Where MONAI Label would log a warning and leave the bundle out, this raises ``AssertionError``, so a bundle that
lost a file or key MONAI Label reads fails here (``test_loader_rejects_*`` prove it). With
``MEDGEN_MONAILABEL_PYTHON`` set to a Python that has monailabel (docs/monai_label.md), ``test_real_monai_label``
also runs MONAI Label's own classes on the same folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose

REPO = Path(__file__).resolve().parents[2]
# a bundle that ships no weights cannot be loaded (MONAI Label ignores it): strict xfail until its weights land
BUNDLES = [name if (REPO / "bundles" / name / "models" / "model.pt").is_file() else
           pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"{name} ships no models/model.pt yet"))
           for name in ("cxr_ddpm", "brain_mri_score", "blood_cells_ddpm")]
# monailabel 0.8.5 BundleConstants (infer and train)
INFER_CONFIGS = ["inference.json", "inference.yaml"]
TRAIN_CONFIGS = ["train.json", "train.yaml"]
# ids BundleTrainTask.__call__ sets before monai.bundle.run (validate#dataset#data only when the request's
# val_split >= 0; a request with val_split -1 keeps the bundle's own validation)
TRAIN_OVERRIDES = ["train#trainer#max_epochs", "train#dataset#data", "train#handlers"]


def _unload(name: str) -> None:
    """monailabel.utils.others.class_utils.unload_module."""
    for m in [m for m in sorted(sys.modules) if m == name or m.startswith(f"{name}.")]:
        del sys.modules[m]


def _parsed(parser: ConfigParser, path: Path, key: str) -> Any:
    sys.path.insert(0, str(path))
    _unload("scripts")
    try:
        return parser.get_parsed_content(key, instantiate=True)
    finally:
        sys.path.remove(str(path))


def load_like_monai_label(path: Path, device: str = "cpu") -> dict[str, Any]:
    """What MONAI Label 0.8.5's monaibundle app builds from the bundle folder ``path``; AssertionError where it
    would leave the bundle out or fail at the first inference request."""
    configs = path / "configs"
    found = [c for c in INFER_CONFIGS if (configs / c).exists()]
    assert found, f"MONAI Label ignores {path}: no configs/{' or configs/'.join(INFER_CONFIGS)}"
    parser = ConfigParser()
    parser.read_config(str(configs / found[0]))
    parser.config.update({"bundle_root": str(path)})  # MONAI Label replaces bundle_root by the folder
    parser.config["use_click"] = False
    model_path = path / "models" / "model.pt"
    network = None
    if model_path.exists():
        assert parser.get("network_def") is not None, f"{configs / found[0]}: no network_def (MONAI Label builds it)"
        network = _parsed(parser, path, "network_def")
        assert isinstance(network, torch.nn.Module), f"{configs / found[0]}: network_def is not a torch module"
    else:
        model_path = path / "models" / "model.ts"
        assert model_path.exists(), f"MONAI Label ignores {path}: neither models/model.pt nor models/model.ts"
    metadata = json.loads((configs / "metadata.json").read_text())
    key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
    key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
    labels = {v.lower(): int(k) for k, v in pred.get("channel_def", {}).items() if v.lower() != "background"}
    spatial_shape = image.get("spatial_shape")
    out: dict[str, Any] = {
        "config": found[0], "key_image": key_image, "key_pred": key_pred, "labels": labels,
        "dimension": len(spatial_shape) if spatial_shape else 3, "description": metadata.get("description"),
        "version": metadata.get("version"), "model_path": model_path,
    }
    # basic_infer._get_network (torch.load with torch's default weights_only)
    if network is not None:
        checkpoint = torch.load(model_path, map_location=device)
        state = checkpoint.get("model", checkpoint)
        out["missing_keys"] = sorted(set(network.state_dict()) ^ set(state))
        network.load_state_dict(state, strict=False)
    else:
        network = torch.jit.load(model_path, map_location=device)
    out["network"] = network.eval()
    # _update_device: the request's device replaces the config's "device"
    parser.config.update({"device": device})
    if parser.ref_resolver.items.get("device"):
        parser.ref_resolver.items["device"] = ConfigItem(config=device, id="device")
    out["inferer"] = _parsed(parser, path, "inferer") if parser.get("inferer") else None
    for name, keys in (("pre", ["preprocessing", "pre_transforms"]), ("post", ["postprocessing", "post_transforms"])):
        chain: list = []
        for k in keys:
            if parser.get(k):
                c = _parsed(parser, path, k)
                chain = list(c.transforms) if isinstance(c, Compose) else c
        out[name] = chain
    return out


def train_like_monai_label(path: Path) -> dict[str, Any]:
    """BundleTrainTask.__init__ (valid when a train config and metadata.json exist) and the ids it overrides."""
    found = [c for c in TRAIN_CONFIGS if (path / "configs" / c).exists()]
    assert found, f"MONAI Label has no trainer for {path}: no configs/{' or configs/'.join(TRAIN_CONFIGS)}"
    metadata = json.loads((path / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(path / "configs" / found[0]))
    parser.config.update({"bundle_root": str(path)})
    missing = [k for k in TRAIN_OVERRIDES if k not in parser]
    return {"description": metadata.get("description", ""), "version": metadata.get("version"), "missing": missing}


def check_loaded(path: Path) -> dict[str, Any]:
    """The bundle as MONAI Label loads it, checked against its own metadata; returns what was loaded."""
    got = load_like_monai_label(path)
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    assert got["key_image"] == "image" and got["key_pred"] == "pred"
    inputs = meta["network_data_format"]["inputs"]
    assert got["dimension"] == len(inputs["image"]["spatial_shape"]) == 2
    assert got["labels"] == {v.lower(): int(k) for k, v in meta["network_data_format"]["outputs"]["pred"]
                             ["channel_def"].items()}
    assert got["version"] == meta["version"] and got["description"]
    # strict=False in MONAI Label: a name mismatch would silently leave random weights
    assert got["missing_keys"] == [], f"{got['model_path']}: keys MONAI Label's network_def does not share"
    assert got["inferer"] is None or isinstance(got["inferer"], Inferer)
    # the network MONAI Label built holds the bundle's weights and runs on the inputs the metadata names
    checkpoint = torch.load(got["model_path"], map_location="cpu")
    state = checkpoint.get("model", checkpoint)
    assert all(torch.equal(v, state[k]) for k, v in got["network"].state_dict().items())
    shape = inputs["image"]["spatial_shape"]
    x = torch.randn(1, inputs["image"]["num_channels"], *shape, generator=torch.Generator().manual_seed(0))
    extra = {k: torch.tensor([max(v["value_range"][0], 1)], dtype=getattr(torch, v["dtype"]))
             for k, v in list(inputs.items())[1:]}
    with torch.no_grad():
        pred = got["network"](x, **extra)
    assert pred.shape == x.shape
    trained = train_like_monai_label(path)
    assert trained["missing"] == [], f"{path}: MONAI Label's trainer sets {trained['missing']}, absent in the config"
    assert trained["version"] == meta["version"]
    return got


@pytest.mark.parametrize("name", BUNDLES)
def test_monai_label_loads_bundle(name: str) -> None:
    """MONAI Label's monaibundle app, given the bundle folder, builds its network and reads the right weights."""
    got = check_loaded(REPO / "bundles" / name)
    assert got["config"] == "inference.yaml"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, dst, ignore=shutil.ignore_patterns("runs"))
    return dst


@pytest.mark.parametrize("what", ["configs/inference.yaml", "models/model.pt", "configs/metadata.json"])
def test_loader_rejects_missing_file(what: str, tmp_path: Path) -> None:
    """A bundle without a file MONAI Label reads fails the loader check."""
    path = _copy("cxr_ddpm", tmp_path)
    (path / what).unlink()
    with pytest.raises((AssertionError, FileNotFoundError)):
        load_like_monai_label(path)


@pytest.mark.parametrize("key", ["network_def", "network_data_format", "inputs", "outputs"])
def test_loader_rejects_missing_key(key: str, tmp_path: Path) -> None:
    """A bundle without a key MONAI Label reads fails the loader check."""
    path = _copy("cxr_ddpm", tmp_path)
    if key == "network_def":
        lines = (path / "configs" / "inference.yaml").read_text().splitlines()
        start = lines.index("network_def:")
        end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#")))
        (path / "configs" / "inference.yaml").write_text("\n".join(lines[:start] + lines[end:]) + "\n")
    else:
        meta = json.loads((path / "configs" / "metadata.json").read_text())
        if key == "network_data_format":
            del meta[key]
        else:
            del meta["network_data_format"][key]
        (path / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises((AssertionError, KeyError)):
        load_like_monai_label(path)


def test_loader_rejects_renamed_weights(tmp_path: Path) -> None:
    """Weights whose names differ from network_def's (which MONAI Label would load with strict=False) fail."""
    path = _copy("cxr_ddpm", tmp_path)
    state = torch.load(path / "models" / "model.pt", map_location="cpu")
    torch.save({f"module.{k}": v for k, v in state.items()}, path / "models" / "model.pt")
    with pytest.raises(AssertionError, match="keys"):
        check_loaded(path)


def _exported(name: str, tmp_path: Path) -> Path:
    zoo_export = pytest.importorskip("medgen.zoo_export")
    return Path(zoo_export.export_bundle(REPO / "bundles" / name, tmp_path / "zoo"))


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_monai_label_loads_zoo_export(name: str, tmp_path: Path) -> None:
    """The zoo form (``medgen zoo-export``, JSON configs, vendored ``scripts/``) loads the same way."""
    path = _exported(name, tmp_path)
    try:
        got = check_loaded(path)
    finally:
        _unload("scripts")
    assert got["config"] == "inference.json"


REAL = """
import json, sys, torch
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
i = BundleInferTask(sys.argv[1], {"preload": "false"})
out = {"valid": i.is_valid(), "train_valid": BundleTrainTask(sys.argv[1], {}).is_valid()}
if i.is_valid():
    net = i._get_network("cpu", None)
    out.update(labels=i.labels, dimension=i.dimension, version=i.version, key_image=i.key_image,
               key_pred=i.key_pred, network=type(net).__name__, inferer=type(i.inferer()).__name__,
               keys_match=set(i.network.state_dict()) == set(torch.load(i.path[0], map_location="cpu")))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("form", ["repo", "zoo"])
@pytest.mark.parametrize("name", BUNDLES)
def test_real_monai_label(name: str, form: str, tmp_path: Path) -> None:
    """MONAI Label's own BundleInferTask / BundleTrainTask, in the Python named by MEDGEN_MONAILABEL_PYTHON."""
    python = os.environ.get("MEDGEN_MONAILABEL_PYTHON")
    if not python:
        pytest.skip("MEDGEN_MONAILABEL_PYTHON is not set (a Python with monailabel, see docs/monai_label.md)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if form == "repo":
        path, env["PYTHONPATH"] = REPO / "bundles" / name, str(REPO)  # the repo's configs import medgen
    else:
        path = _exported(name, tmp_path)  # the zoo form runs without medgen
    proc = subprocess.run([python, "-c", REAL, str(path)], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    assert got["valid"] and got["train_valid"], proc.stderr[-3000:]
    assert got["keys_match"] and got["dimension"] == 2 and got["version"] == meta["version"]
    assert (got["key_image"], got["key_pred"]) == ("image", "pred")
