"""``python -m medgen.demo`` (``make demo``, the README's first command), at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_demo_fine_tunes_the_shipped_weights_with_their_own_objective(shared_data: Path, tmp_path: Path):
    """The shipped weights predict plain epsilon while train.yaml now defaults to EDM preconditioning: the demo's
    fine-tune must train (and record) the weights' own objective, then sample from the result."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "medgen.demo", "--out", str(out), "--data-dir", str(shared_data),
                           "--images-per-class", "8", "--epochs", "1", "--samples-per-class", "1", "--steps", "2",
                           "--no-eval"], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fine-tuning the shipped weights" in proc.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"].get("preconditioning", "none") == "none" and meta["prediction_type"] == "epsilon"
    records = [json.loads(x) for x in (out / "samples" / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["class"] for r in records) == ["NORMAL", "PNEUMONIA"]
