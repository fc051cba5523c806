"""Crash-safe writes and resume: a killed write, a full disk, a failed or diverged run never cost a good checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medgen.engine import CheckpointSaver, LossHistory, TimeLimit, latest_checkpoint, save_state_dict_atomic
from medgen.fileio import DiskFullError, append_line, temp_files, write_bytes_atomic

REPO = Path(__file__).resolve().parents[2]


def _trainer(net: torch.nn.Module, fail_at: int | None = None, nan_at: int | None = None, sleep: float = 0.0):
    """An ignite engine that 'trains' ``net``: raises at iteration ``fail_at``, makes the weights NaN at ``nan_at``."""

    def step(engine: Engine, batch):
        if sleep:
            time.sleep(sleep)
        if engine.state.iteration == fail_at:
            raise RuntimeError("data loader died")
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01)
                if engine.state.iteration == nan_at:
                    p.fill_(float("nan"))
        return {"loss": float(net.weight.sum())}

    return Engine(step)


def _saver(net: torch.nn.Module, ckpt: Path, n_saved: int | None = None) -> CheckpointSaver:
    return CheckpointSaver(save_dir=str(ckpt), save_dict={"model": net}, save_interval=1, save_final=True,
                           final_filename="checkpoint_final.pt", epoch_level=True, n_saved=n_saved)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- the write itself ----------------------------------------------------------------------------------------------

def test_a_write_killed_midway_leaves_the_old_file_and_its_temporary_file_is_cleaned(tmp_path):
    target = tmp_path / "model.pt"
    write_bytes_atomic(b"old weights", target)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from medgen.fileio import atomic_write
            with atomic_write(sys.argv[1]) as f:
                f.write(b"new" * 100_000)
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
        """), str(target)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert target.read_bytes() == b"old weights"
    left = temp_files(tmp_path)
    assert len(left) == 1 and left[0].stat().st_size == 300_000  # the killed write, never renamed
    write_bytes_atomic(b"new weights", target)  # the next write of that file removes what the kill left
    assert target.read_bytes() == b"new weights" and _names(tmp_path) == ["model.pt"]


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt || mount -t tmpfs "
                            "-o size=1m tmpfs /tmp"], capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs `unshare -rm` to mount a small tmpfs")
def test_full_disk_says_so_names_the_file_and_keeps_the_previous_one(tmp_path):
    """A real 2 MiB tmpfs (in a private mount namespace) that fills up: no mock of the write."""
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent("""
        import json, sys, torch
        from pathlib import Path
        from medgen.fileio import DiskFullError, append_line, temp_files, torch_save_atomic
        d = Path(sys.argv[1])
        torch_save_atomic({"w": torch.ones(100_000)}, d / "checkpoint_epoch=1.pt")
        out = {}
        try:
            torch_save_atomic({"w": torch.randn(1_000_000)}, d / "checkpoint_epoch=1.pt")  # 4 MB: does not fit
        except DiskFullError as err:
            out["save"] = str(err)
        (d / "filler").write_bytes(b"")
        try:
            with open(d / "filler", "ab") as f:  # fill the disk to the last byte
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        except OSError:
            pass
        try:
            append_line(d / "loss.jsonl", "x" * 10_000)
        except DiskFullError as err:
            out["append"] = str(err)
        out["kept"] = float(torch.load(d / "checkpoint_epoch=1.pt")["w"].sum())
        out["temp"] = [p.name for p in temp_files(d)]
        print(json.dumps(out))
    """))
    full = tmp_path / "full"
    full.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {full} && "
                           f"exec {sys.executable} {script} {full}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    assert out["save"].startswith(f"cannot write {full}/checkpoint_epoch=1.pt: no space left on device")
    assert "\n" not in out["save"] and "unchanged" in out["save"]
    assert out["append"].startswith(f"cannot write {full}/loss.jsonl: no space left on device")
    assert out["kept"] == 100_000.0  # the previous checkpoint, intact
    assert out["temp"] == []  # the partial file was removed


def test_disk_full_error_is_one_line():
    err = DiskFullError(28, "cannot write /x/model.pt: no space left on device")
    assert str(err) == "cannot write /x/model.pt: no space left on device"


# ---- which checkpoint a run resumes from ---------------------------------------------------------------------------

@pytest.fixture()
def three_epochs(tmp_path) -> Path:
    net = torch.nn.Linear(64, 64)
    engine = _trainer(net)
    _saver(net, tmp_path / "ckpt").attach(engine)
    engine.run(range(2), max_epochs=3)
    assert _names(tmp_path / "ckpt") == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt",
                                         "checkpoint_final.pt"]
    return tmp_path / "ckpt"


def test_resume_picks_by_epoch_not_file_time_and_skips_damaged_files(three_epochs, caplog):
    ckpt = three_epochs
    assert latest_checkpoint(ckpt).name == "checkpoint_final.pt"  # epoch 3 twice: the final one
    os.utime(ckpt / "checkpoint_epoch=1.pt", ns=(2 * 10**18, 2 * 10**18))  # a copy or restore touched it
    assert latest_checkpoint(ckpt).name == "checkpoint_final.pt"

    data = (ckpt / "checkpoint_final.pt").read_bytes()
    (ckpt / "checkpoint_final.pt").write_bytes(data[: len(data) // 2])  # cut short
    raw = bytearray((ckpt / "checkpoint_epoch=3.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the weights
    (ckpt / "checkpoint_epoch=3.pt").write_bytes(bytes(raw))
    (ckpt / ".checkpoint_epoch=4.pt.0a1b2c3d.tmp").write_bytes(data[:100])  # a write killed midway
    with caplog.at_level(logging.WARNING, logger="medgen.engine.checkpoints"):
        assert latest_checkpoint(ckpt).name == "checkpoint_epoch=2.pt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert any(f"skipping damaged checkpoint {ckpt / 'checkpoint_final.pt'} (truncated" in w for w in warnings)
    assert any(f"{ckpt / 'checkpoint_epoch=3.pt'}" in w and "CRC" in w for w in warnings)
    assert not temp_files(ckpt)  # cleaned
    with zipfile.ZipFile(ckpt / "checkpoint_epoch=2.pt") as z:
        assert z.testzip() is None


def test_resume_after_a_time_limit_takes_the_final_checkpoint_of_a_part_epoch(tmp_path):
    net = torch.nn.Linear(8, 8)
    engine = _trainer(net, sleep=0.05)
    _saver(net, tmp_path).attach(engine)
    TimeLimit(1).attach(engine)
    engine.run(range(8), max_epochs=1000)
    stopped_at = engine.state.iteration
    final = torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == stopped_at
    assert latest_checkpoint(tmp_path).name == "checkpoint_final.pt"


def test_rotation_keeps_n_saved_across_interrupted_and_resumed_runs(tmp_path):
    from medgen.engine import ResumeFromLatest

    net = torch.nn.Linear(8, 8)
    engine = _trainer(net, fail_at=7)  # killed runs leave every checkpoint they wrote: epochs 1-3 here
    _saver(net, tmp_path).attach(engine)
    with pytest.raises(RuntimeError):
        engine.run(range(2), max_epochs=10)
    assert _names(tmp_path) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]

    net = torch.nn.Linear(8, 8)
    engine = _trainer(net)
    ResumeFromLatest(tmp_path, {"model": net}).attach(engine)
    _saver(net, tmp_path, n_saved=2).attach(engine)
    engine.run(range(2), max_epochs=5)
    assert _names(tmp_path) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt", "checkpoint_final.pt"]


# ---- what a failing run writes -------------------------------------------------------------------------------------

def test_a_failed_run_writes_no_final_checkpoint(tmp_path):
    net = torch.nn.Linear(8, 8)
    engine = _trainer(net, fail_at=5)  # 2 iterations per epoch: fails in epoch 3
    _saver(net, tmp_path).attach(engine)
    with pytest.raises(RuntimeError, match="data loader died"):
        engine.run(range(2), max_epochs=10)
    assert _names(tmp_path) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=2.pt"


def test_diverged_weights_are_never_saved_and_the_older_checkpoint_is_kept(tmp_path):
    net = torch.nn.Linear(8, 8)
    engine = _trainer(net, nan_at=5)
    _saver(net, tmp_path, n_saved=1).attach(engine)  # rotation deletes epoch 2 only after epoch 3 is saved
    with pytest.raises(SystemExit) as exc:
        engine.run(range(2), max_epochs=10)
    message = str(exc.value)
    assert message.startswith(f"medgen: error: {tmp_path / 'checkpoint_epoch=3.pt'} not written: NaN/Inf in "
                              "model.weight, model.bias (training diverged)")
    assert "\n" not in message
    assert _names(tmp_path) == ["checkpoint_epoch=2.pt"]
    assert torch.isfinite(torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)["model"]["weight"]).all()


def test_a_non_finite_loss_stops_with_one_line_before_anything_is_saved(tmp_path):
    net = torch.nn.Linear(8, 8)
    engine = _trainer(net, nan_at=3)  # weights NaN in the 2nd epoch's first iteration: its loss is NaN
    LossHistory(tmp_path / "loss.jsonl").attach(engine)
    _saver(net, tmp_path / "ckpt").attach(engine)
    with pytest.raises(SystemExit) as exc:
        engine.run(range(2), max_epochs=4)
    assert str(exc.value).startswith("medgen: error: training loss became nan at epoch 2, iteration 3: training "
                                     "stopped and no checkpoint or model.pt written")
    assert _names(tmp_path / "ckpt") == ["checkpoint_epoch=1.pt"]
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "loss.jsonl").read_text().splitlines())] == [1]


def test_model_weights_with_nan_or_fp16_overflow_are_refused_and_the_old_file_stays(tmp_path):
    net = torch.nn.Linear(4, 4)
    path = save_state_dict_atomic(net, tmp_path / "model.pt", dtype=torch.float16)
    before = path.read_bytes()
    with torch.no_grad():
        net.weight[0, 0] = 1e6  # finite in fp32, inf in fp16
    with pytest.raises(FloatingPointError, match=r"model.pt not written: NaN/Inf in weight \(training diverged\)"):
        save_state_dict_atomic(net, path, dtype=torch.float16)
    with torch.no_grad():
        net.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN/Inf in bias \("):
        save_state_dict_atomic(net, path)
    assert path.read_bytes() == before and _names(tmp_path) == ["model.pt"]


def test_loss_log_drops_epochs_the_resumed_weights_never_had_and_a_torn_line(tmp_path):
    log = tmp_path / "loss.jsonl"
    for epoch in (1, 2, 3):
        append_line(log, json.dumps({"epoch": epoch, "iteration": 2 * epoch, "loss": 0.5}))
    with open(log, "a") as f:
        f.write('{"epoch": 4, "itera')  # killed while writing
    engine = Engine(lambda e, b: {"loss": 0.25})

    @engine.on(Events.STARTED)
    def resumed(e):  # what ResumeFromLatest does, attached before LossHistory as in the bundles
        e.state.epoch, e.state.iteration = 2, 4

    LossHistory(log).attach(engine)
    engine.run(range(2), max_epochs=3)
    assert [r["epoch"] for r in map(json.loads, log.read_text().splitlines())] == [1, 2, 3]


def _losses(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_run_stopped_by_its_limit_keeps_the_loss_of_the_epoch_it_stopped_in_and_its_resume_completes_it(tmp_path):
    from medgen.engine import ResumeFromLatest

    log, ckpt = tmp_path / "loss.jsonl", tmp_path / "ckpt"

    def run(max_iterations: int) -> Engine:
        net = torch.nn.Linear(2, 2)
        engine = Engine(lambda e, b: {"loss": float(e.state.iteration)})  # iteration i has loss i
        ResumeFromLatest(ckpt, {"model": net}).attach(engine)
        TimeLimit(max_iterations=max_iterations).attach(engine)
        LossHistory(log).attach(engine)
        _saver(net, ckpt).attach(engine)
        engine.run(range(4), max_epochs=10)
        return engine

    run(6)  # epoch 1 (iterations 1-4), then 5 and 6 of epoch 2
    assert _losses(log) == [{"epoch": 1, "iteration": 4, "loss": 2.5},
                            {"epoch": 2, "iteration": 6, "loss": 5.5, "iterations": 2, "partial": True}]
    assert (tmp_path / "training_curves.png").is_file()
    run(12)  # resumed at iteration 6: epoch 2 completes over all its iterations (5-8), epoch 3 stops on its last
    assert _losses(log) == [{"epoch": 1, "iteration": 4, "loss": 2.5}, {"epoch": 2, "iteration": 8, "loss": 6.5},
                            {"epoch": 3, "iteration": 12, "loss": 10.5}]


def test_a_partial_loss_line_the_resumed_weights_never_reached_is_dropped(tmp_path):
    log = tmp_path / "loss.jsonl"
    for record in ({"epoch": 1, "iteration": 4, "loss": 2.5},
                   {"epoch": 2, "iteration": 6, "loss": 5.5, "iterations": 2, "partial": True}):
        append_line(log, json.dumps(record))
    engine = Engine(lambda e, b: {"loss": 1.0})

    @engine.on(Events.STARTED)
    def resumed(e):  # the epoch-1 checkpoint, not the run's final one at iteration 6
        e.state.epoch, e.state.iteration = 1, 4

    LossHistory(log).attach(engine)
    engine.run(range(4), max_epochs=2)
    assert _losses(log) == [{"epoch": 1, "iteration": 4, "loss": 2.5}, {"epoch": 2, "iteration": 8, "loss": 1.0}]
