"""A training run killed (SIGKILL) at many points, inside checkpoint writes included, always resumes and finishes; a
diverged run and a full disk stop with one line and lose nothing. Real bundle runs on real chest X-rays."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from medgen.fileio import temp_files

REPO = Path(__file__).resolve().parents[2]
TRAIN = "bundles/cxr_ddpm/configs/train.yaml"
EPOCHS = 4
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,False]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "8"]
TIMEOUT = 900  # one run, on a busy 2-core machine

pytestmark = pytest.mark.slow


def train_cmd(data: Path, out: Path, epochs: int = EPOCHS, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
            "--dataset_dir", str(data), "--output_dir", str(out), "--batch_size", "2", "--max_epochs", str(epochs),
            "--checkpoint_interval", "1", "--sample_interval", str(EPOCHS), "--samples_per_class_in_grid", "1",
            "--num_workers", "0", *TINY, *extra]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def four_per_class(kermany: Path, tmp_path_factory) -> Path:
    """4 real chest X-rays per class (symlinks): 8 training images, 4 iterations per epoch at batch 2."""
    root = tmp_path_factory.mktemp("cxr4")
    for name in ("NORMAL", "PNEUMONIA"):
        (root / name).mkdir()
        for src in sorted((kermany / "train" / name).glob("*.jpeg"))[:4]:
            (root / name / src.name).symlink_to(src)
    return root


@dataclass
class Ctx:
    out: Path
    started: float
    ckpts_at_start: set[str]
    loss_lines_at_start: int
    seen: dict
    log: Path | None = None

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoints"

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _ckpts(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("checkpoint_*.pt")} if folder.is_dir() else set()


def _loss_lines(out: Path) -> int:
    path = out / "loss.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _temp(folder: Path, prefix: str, ctx: Ctx | None = None) -> list[Path]:
    """Temporary files of an unfinished write; with ``ctx``, only those this run started (a run killed earlier may
    have left one, which this run removes at start)."""
    left = ctx.seen.setdefault("left", set()) if ctx is not None else set()
    found = [p for p in temp_files(folder) if p.name.startswith(prefix)]
    if ctx is not None and "started" not in ctx.seen:
        ctx.seen["started"] = True
        left.update(p.name for p in found)
    return [p for p in found if p.name not in left]


def _mid_epoch(ctx: Ctx) -> bool:
    """Training the epoch after the first checkpoint this run wrote: its first iteration is logged (three remain).
    Read from the log, not timed: an epoch of 4 tiny iterations can take less than 0.3 s on a fast machine."""
    new = _ckpts(ctx.ckpt) - ctx.ckpts_at_start
    epochs = [int(m.group(1)) for m in map(re.compile(r"checkpoint_epoch=(\d+)\.pt").fullmatch, new) if m]
    if "next" not in ctx.seen and epochs and not temp_files(ctx.out):
        ctx.seen["next"] = f"Epoch: {min(epochs) + 1}/{EPOCHS}, Iter: 1/"
    return "next" in ctx.seen and ctx.log is not None and ctx.seen["next"] in ctx.log.read_text(errors="replace")


def _new_grid(ctx: Ctx) -> bool:
    """A grid this run wrote: the write itself takes milliseconds and polling can miss it, so the kill then lands
    right after it, before the epoch's remaining writes."""
    grids = {p.name for p in (ctx.out / "grids").glob("grid_*.png")}
    return bool(grids - ctx.seen.setdefault("grids", grids))


# (label, when to kill, the temporary file the kill should leave if it landed inside that write)
PLAN: list[tuple[str, Callable[[Ctx], bool], Callable[[Ctx], list[Path]] | None]] = [
    ("starting up (2 s)", lambda c: c.elapsed() > 2.0, None),
    ("inside a checkpoint write", lambda c: bool(_temp(c.ckpt, ".checkpoint_epoch=", c)),
     lambda c: _temp(c.ckpt, ".checkpoint_epoch=", c)),
    ("inside a model.pt write", lambda c: bool(_temp(c.out, ".model.pt.", c)),
     lambda c: _temp(c.out, ".model.pt.", c)),
    ("mid-epoch (training)", _mid_epoch, None),
    ("inside a checkpoint write", lambda c: bool(_temp(c.ckpt, ".checkpoint_epoch=", c)),
     lambda c: _temp(c.ckpt, ".checkpoint_epoch=", c)),
    ("inside the sample-grid write", lambda c: bool(_temp(c.out / "grids", ".grid_", c)) or _new_grid(c),
     lambda c: _temp(c.out / "grids", ".grid_", c)),
    ("inside the final checkpoint write", lambda c: bool(_temp(c.ckpt, ".checkpoint_final.pt.", c)),
     lambda c: _temp(c.ckpt, ".checkpoint_final.pt.", c)),
    ("(none: runs to the end)", lambda c: False, None),
]


def _resumed_epoch(log: str) -> int | None:
    m = re.search(r"resumed from \S+ at epoch (\d+)", log)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def killed_and_resumed(four_per_class: Path, tmp_path_factory) -> tuple[Path, list[dict], Path]:
    """Run training over and over in one folder, killing each run at the next point of ``PLAN``."""
    base = tmp_path_factory.mktemp("kill")
    out = base / "run"
    rows = []
    for k, (label, when, temp_of) in enumerate(PLAN, 1):
        log_path = base / f"run{k}.log"
        ctx = Ctx(out, time.monotonic(), _ckpts(out / "checkpoints"), _loss_lines(out), {}, log_path)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(train_cmd(four_per_class, out), cwd=REPO, env=ENV, stdout=log,
                                    stderr=subprocess.STDOUT)
            killed_at, inside = None, None
            while proc.poll() is None and ctx.elapsed() < TIMEOUT:
                if when(ctx):
                    proc.send_signal(signal.SIGKILL)
                    killed_at = ctx.elapsed()
                    proc.wait()
                    inside = [p.name for p in temp_of(ctx)] if temp_of else None
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        text = log_path.read_text(errors="replace")
        rows.append({
            "run": k,
            "kill point": label,
            "resumed from epoch": _resumed_epoch(text),
            "had a checkpoint": bool(ctx.ckpts_at_start),
            "killed after s": round(killed_at, 1) if killed_at is not None else None,
            "exit code": proc.returncode,
            "temp file left by the kill": inside,
            "checkpoints after": sorted(_ckpts(out / "checkpoints")),
            "traceback": "Traceback" in text,
            "log": str(log_path),
        })
    table = base / "kill_table.json"
    table.write_text(json.dumps(rows, indent=1))
    print(f"\n{'run':>3}  {'kill point':<34} {'resumed':>7} {'killed after':>12} {'exit':>5}  temp left / checkpoints")
    for r in rows:
        resumed = "-" if r["resumed from epoch"] is None else f"ep {r['resumed from epoch']}"
        when = "-" if r["killed after s"] is None else f"{r['killed after s']} s"
        left = ",".join(r["temp file left by the kill"] or []) or "-"
        print(f"{r['run']:>3}  {r['kill point']:<34} {resumed:>7} {when:>12} {r['exit code']:>5}  {left} / "
              f"{' '.join(r['checkpoints after'])}")
    print(f"kill table: {table}")
    return out, rows, table


def test_killed_at_many_points_every_rerun_resumes_and_the_last_finishes(killed_and_resumed):
    out, rows, _ = killed_and_resumed
    *killed, last = rows
    assert all(r["exit code"] == -signal.SIGKILL for r in killed), [(r["run"], r["exit code"]) for r in rows]
    assert last["exit code"] == 0, Path(last["log"]).read_text()[-3000:]
    assert not any(r["traceback"] for r in rows)  # no run crashed on what an earlier one left
    for r in rows:
        if r["had a checkpoint"]:
            assert r["resumed from epoch"] is not None, r  # every rerun with a checkpoint resumed from one
    inside_ckpt = [r for r in killed if r["temp file left by the kill"] and "checkpoint" in r["kill point"]]
    assert inside_ckpt, "no kill landed inside a checkpoint write"

    final = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"] == EPOCHS * 4
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert weights.keys() == final["ema"].keys()
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    losses = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == list(range(1, EPOCHS + 1))  # one line per epoch of the weights
    assert (out / "grids" / f"grid_epoch_{EPOCHS:04d}.png").is_file()
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []  # what the kills left was cleaned
    # n_saved: 2 holds across the killed runs
    assert sorted(_ckpts(out / "checkpoints")) == [f"checkpoint_epoch={EPOCHS - 1}.pt", f"checkpoint_epoch={EPOCHS}.pt",
                                                   "checkpoint_final.pt"]
    for ckpt in (out / "checkpoints").glob("*.pt"):
        with zipfile.ZipFile(ckpt) as z:
            assert z.testzip() is None, ckpt


def _error_line(stderr: str) -> str:
    """The last line of stderr, from ``medgen: error:`` on (a progress bar may share the terminal line)."""
    last = (stderr.strip().splitlines() or [""])[-1]
    return last[last.find("medgen: error:"):] if "medgen: error:" in last else last


def test_a_diverged_run_stops_with_one_line_and_writes_no_weights(four_per_class, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(train_cmd(four_per_class, out, 2, "--learning_rate", "1e30"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    last = _error_line(proc.stderr)
    print(proc.returncode, last)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert re.match(r"medgen: error: training loss became (nan|inf) at epoch 1, iteration \d+: training stopped and "
                    "no checkpoint or model.pt written", last), last
    assert not list((out / "checkpoints").glob("*.pt")) and not (out / "model.pt").exists()  # nothing to resume


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs `unshare -rm` to mount a small tmpfs")
def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(killed_and_resumed, four_per_class, tmp_path):
    """The finished run folder on a small real tmpfs filled up to 300 KiB: the next checkpoint (~0.8 MB) cannot be
    written; once space is freed, the rerun resumes and finishes."""
    done, _, _ = killed_and_resumed
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent(f"""
        import hashlib, json, os, re, shutil, subprocess, sys
        from pathlib import Path
        disk = Path(sys.argv[1])
        out = disk / "run"
        shutil.copytree({str(done)!r}, out)
        sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
        files = lambda: {{p.name: sha(p) for p in [*(out / "checkpoints").glob("*.pt"), out / "model.pt"]}}
        before = files()
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:
            f.truncate(0)
            f.write(b"x" * (free - 300 * 1024))
        cmd = {train_cmd(four_per_class, Path("OUT"), EPOCHS + 2)!r}
        cmd = [str(out) if c == "OUT" else c for c in cmd]
        full = subprocess.run(cmd, capture_output=True, text=True)
        after = files()
        temps = [str(p) for p in out.rglob("*.tmp")]
        (disk / "filler").unlink()
        again = subprocess.run(cmd, capture_output=True, text=True)
        rerun_log = again.stdout + again.stderr
        resumed = re.search(r"resumed from \\S+ at epoch \\d+", rerun_log)
        rerun_log = (resumed.group(0) if resumed else "not resumed") + "\\n" + rerun_log[-3000:]
        print(json.dumps({{"rc": full.returncode, "stderr": full.stderr[-4000:], "before": before, "after": after,
                          "temps": temps, "rerun_rc": again.returncode, "rerun_log": rerun_log,
                          "final": sorted(p.name for p in (out / "checkpoints").glob("*.pt"))}}))
    """))
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16m tmpfs {disk} && "
                           f"exec {sys.executable} {script} {disk}"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=3 * TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    last = _error_line(res["stderr"])
    print(res["rc"], last)
    assert res["rc"] != 0 and "Traceback" not in res["stderr"]
    assert re.match(rf"medgen: error: cannot write {disk}/run/\S+: no space left on device", last), last
    assert res["after"] == res["before"]  # every checkpoint and model.pt as it was
    assert res["temps"] == []  # the partial file was removed
    assert res["rerun_rc"] == 0, res["rerun_log"]
    assert re.match(rf"resumed from {disk}/run/checkpoints/checkpoint_final.pt at epoch {EPOCHS}\n", res["rerun_log"])
    assert f"checkpoint_epoch={EPOCHS + 2}.pt" in res["final"]
