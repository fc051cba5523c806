"""Fixtures for the evaluation tests: real-data slices (../shared/data or $MEDGEN_TEST_DATA) and FID weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# The CI/dev boxes have 2 busy cores: one thread avoids oversubscription (small ops get 10-100x faster).
torch.set_num_threads(1)


def data_root() -> Path:
    return Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def kermany_root() -> Path:
    root = data_root() / "chest_xray_kermany_224"
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set MEDGEN_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def pneumoniamnist_npz() -> Path:
    path = data_root() / "pneumoniamnist" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"real test data not found at {path} (set MEDGEN_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def kermany_datalist(kermany_root, tmp_path_factory) -> Path:
    """A datalist of 12 training and 12 test images per class (NORMAL, PNEUMONIA)."""
    from medgen.metrics.image_sets import datalist_from_class_folders

    dl = datalist_from_class_folders(
        {"training": kermany_root / "train", "test": kermany_root / "test"}, per_class=12, seed=1
    )
    path = tmp_path_factory.mktemp("datalist") / "kermany_small.json"
    path.write_text(json.dumps(dl))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh MEDGEN_CACHE (feature cache) that keeps the FID weights location where it was."""
    from medgen.metrics.features import FID_WEIGHTS_NAME, cache_dir

    weights = cache_dir() / FID_WEIGHTS_NAME
    if weights.is_file() and "MEDGEN_FID_WEIGHTS" not in os.environ:
        monkeypatch.setenv("MEDGEN_FID_WEIGHTS", str(weights))
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def blood_cells_datalist_dict(root: Path, per_split: dict[str, int], seed: int = 0) -> dict:
    """A datalist over the real colour PBC blood-cell images (paths into ``root``, nothing copied): for each class,
    ``per_split[split]`` distinct images, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    data: dict = {"classes": classes, **{s: [] for s in per_split}}
    for label, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).glob("*.jpg"))
        chosen = rng.choice(files, sum(per_split.values()), replace=False).tolist()
        for split, n in per_split.items():
            data[split] += [{"image": f, "label": label} for f in chosen[:n]]
            chosen = chosen[n:]
    return data


@pytest.fixture(scope="session")
def blood_cells_root() -> Path:
    root = data_root() / "blood_cells_pbc"
    if not root.is_dir():
        pytest.skip(f"real colour test data not found at {root} (set MEDGEN_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def blood_cells_datalist(blood_cells_root, tmp_path_factory) -> Path:
    """Real colour blood cells: 6 training, 3 test and 1 spare image per class (8 classes)."""
    data = blood_cells_datalist_dict(blood_cells_root, {"training": 6, "test": 3, "spare": 1}, seed=3)
    path = tmp_path_factory.mktemp("colour") / "blood_cells_small.json"
    path.write_text(json.dumps(data))
    return path
