"""``redact_paths``: the run folder's datalist.json names no source file, and resuming still checks the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medgen.engine.runs import keep_datalist, redact_datalist, salted_id
from medgen.metrics.errors import ImageSetError
from medgen.metrics.image_sets import read_datalist
from medgen.networks.weights_meta import META_KEY, datalist_fingerprint

PHI_ROOT = "/pacs/DOE^JANE_MRN12345678_1961-04-07"
DATA = {"classes": ["NORMAL", "PNEUMONIA"], "source": PHI_ROOT, "seed": 0,
        "training": [{"image": f"{PHI_ROOT}/a.dcm", "label": 0}, {"image": f"{PHI_ROOT}/b.dcm", "label": 1}],
        "validation": [{"image": f"{PHI_ROOT}/c.dcm", "label": 0}],
        "test": [{"image": f"{PHI_ROOT}/scan.npz", "npz_key": "test_images", "npz_index": 3, "label": 1}]}
OTHER = {**DATA, "training": [{"image": f"{PHI_ROOT}/z.dcm", "label": 0}, {"image": f"{PHI_ROOT}/b.dcm", "label": 1}]}


def test_the_redacted_copy_names_no_source_path_but_says_which_data_it_was(tmp_path):
    keep_datalist(DATA, tmp_path, tmp_path / "checkpoints", redact_paths=True)
    text = (tmp_path / "datalist.json").read_text()
    assert "DOE" not in text and "MRN" not in text and "/pacs" not in text
    copy = json.loads(text)
    salt = copy["redacted"]["salt"]
    assert copy["redacted"]["datalist_sha256"] == datalist_fingerprint(DATA)
    assert copy["training"][0] == {"image": salted_id(salt, f"{PHI_ROOT}/a.dcm"), "label": 0}
    assert copy["test"][0]["npz_index"] == 3 and copy["classes"] == DATA["classes"]
    # written again (a resumed run): the same salt, so the same file
    keep_datalist(DATA, tmp_path, tmp_path / "checkpoints", redact_paths=True)
    assert (tmp_path / "datalist.json").read_text() == text
    # evaluation refuses it with one line instead of failing on every missing file
    with pytest.raises(ImageSetError, match="redacted copy .* give the original datalist"):
        read_datalist(tmp_path / "datalist.json")
    # without redact_paths the copy is the datalist itself (it names the source files)
    keep_datalist(DATA, tmp_path / "plain", tmp_path / "checkpoints")
    assert PHI_ROOT in (tmp_path / "plain" / "datalist.json").read_text()


def test_resume_with_a_redacted_copy_still_refuses_other_data(tmp_path):
    import torch

    from tests.engine.test_run_folders import meta_for

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    torch.save({"model": {}, META_KEY: meta_for(DATA).state_dict()}, ckpt_dir / "checkpoint_epoch=1.pt")
    assert keep_datalist(DATA, tmp_path, ckpt_dir, redact_paths=True) is DATA  # training reads the real paths
    before = (tmp_path / "datalist.json").read_text()
    with pytest.raises(SystemExit, match=r"other data: training data \(datalist hash\)"):
        keep_datalist(OTHER, tmp_path, ckpt_dir, redact_paths=True)
    assert (tmp_path / "datalist.json").read_text() == before
    assert redact_datalist(DATA, "s")["redacted"]["datalist_sha256"] == datalist_fingerprint(DATA)


@pytest.mark.slow
def test_medgen_train_with_redact_paths_writes_no_path_and_resumes(kermany: Path, tmp_path):
    from tests.engine.test_runs import TINY

    run = tmp_path / "run"

    def train(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "medgen.cli", "train", "cxr_ddpm", "--output_dir", str(run),
                               "--dataset-dir", str(kermany), *TINY, "--redact_paths", "true", *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    train()
    text = (run / "datalist.json").read_text()
    assert str(kermany) not in text and ".jpeg" not in text
    assert str(kermany) not in (run / "run.json").read_text()  # nor the data set's folder in the run record
    ckpt = torch_load(run / "checkpoints" / "checkpoint_final.pt")
    assert json.loads(text)["redacted"]["datalist_sha256"] == ckpt[META_KEY]["datalist_sha256"]
    log = train("--max_epochs", "2")
    assert "resumed from" in log.stdout + log.stderr
    assert torch_load(run / "checkpoints" / "checkpoint_epoch=2.pt")["trainer"]["iteration"] == 2 * 2
    assert (run / "datalist.json").read_text() == text


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
