"""One writer per folder, as a user meets it: a second training into a run folder another process trains in, or a
second sampling job into a samples folder being written, stops in one line and changes nothing; a killed holder
leaves no stale lock (real chest X-rays, the cxr_ddpm bundle through ``monai.bundle run`` and ``medgen sample``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medgen.diffusion.sample_run import samples_role, sharded_otherwise
from medgen.folder_lock import (
    FolderInUseError,
    claim_folder,
    claims_released_after,
    hold_folder,
    is_lock_file,
    release_folder,
)

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "bundles" / "cxr_ddpm" / "configs" / "train.yaml"
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,True]",
        "--num_res_blocks", "1", "--norm_num_groups", "8", "--network_def#num_head_channels", "8",
        "--max_items_per_class", "4", "--batch_size", "4", "--num_workers", "0", "--samples_per_class_in_grid", "1"]
HOLD = ("import sys; from medgen.folder_lock import hold_folder; hold_folder(sys.argv[1], sys.argv[2], 'x'); "
        "print('held', file=sys.stderr, flush=True); sys.stdin.read()")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True, start_new_session=True)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # as a crash or an OOM kill would: no clean-up code runs
    proc.wait(timeout=60)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("medgen: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_a_folder_is_held_by_one_process_and_free_again_when_it_ends(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = start("-c", HOLD, str(folder), "run")
    assert holder.stderr.readline() == "held\n", holder.stderr.read()
    with pytest.raises(FolderInUseError, match=rf"^{folder} is in use by another process \(run lock .medgen-run.lock "
                                               r"is held\): wait for it to finish, or use another$"):
        hold_folder(folder, "run", "use another")
    assert hold_folder(folder, "samples", "x")  # another role of the same folder is free
    release_folder(folder, "samples")
    kill(holder)
    with claim_folder(folder, "run", "x"):  # a killed holder leaves no stale lock
        with claim_folder(folder, "run", "x"):  # this process may claim again
            pass
        assert not hold_folder(folder, "run", "x")  # still held: the inner claim did not release the outer
    assert hold_folder(folder, "run", "x")  # released at the end of the outer block
    with claims_released_after():  # a workflow run in a process that goes on (medgen train, run_bundle)
        assert hold_folder(tmp_path / "other", "run", "x")
    holder = start("-c", HOLD, str(tmp_path / "other"), "run")  # free for the next process: claimed by it now
    assert holder.stderr.readline() == "held\n", holder.stderr.read()
    kill(holder)
    assert not hold_folder(folder, "run", "x")  # a claim made before the block is kept
    release_folder(folder, "run")
    assert is_lock_file(".medgen-run.lock") and not is_lock_file("model.pt")
    with claim_folder(folder, "samples", "x"):  # a claim for a block takes its lock file with it: results only
        (folder / "samples.jsonl").write_text("{}\n")
    assert not (folder / ".medgen-samples.lock").exists() and (folder / "samples.jsonl").is_file()
    made = tmp_path / "made"
    with claim_folder(made, "export", "x"):  # a command stopped by bad input before writing
        assert (made / ".medgen-export.lock").is_file()
    assert not made.exists()  # the folder the claim made goes too: nothing left behind


def test_jobs_sharded_otherwise_do_not_share_a_samples_folder(tmp_path: Path) -> None:
    """Shards of one job write one folder side by side; an unsharded job, or one cut into another number of shards,
    would make seeds a running shard makes."""
    folder = tmp_path / "samples"
    holder = start("-c", HOLD, str(folder), samples_role(0, 2))
    assert holder.stderr.readline() == "held\n", holder.stderr.read()
    try:
        for index, count in ((0, 1), (2, 3)):
            with pytest.raises(FolderInUseError, match=rf"^{folder} is in use by another process \(samples-shard-0of2 "
                                                       r"lock .medgen-samples-shard-0of2.lock is held\)"):
                hold_folder(folder, samples_role(index, count), "x", conflicts=sharded_otherwise(count))
        assert hold_folder(folder, samples_role(2, 3), "x")  # the refused claim kept nothing: claimed anew now
        release_folder(folder, samples_role(2, 3))
        with claim_folder(folder, samples_role(1, 2), "x", conflicts=sharded_otherwise(2)):  # the same job's shard
            pass
    finally:
        kill(holder)
    with claim_folder(folder, samples_role(0, 1), "x", conflicts=sharded_otherwise(1)):  # free once the shard ends
        pass


def test_a_second_evaluation_or_audit_into_a_folder_in_use_stops_before_any_work(tmp_path: Path, capsys) -> None:
    from medgen.metrics.commands import audit_command, evaluate_command
    from medgen.metrics.evaluate import Evaluation

    out = tmp_path / "out"
    for role, verb, command in (("evaluation", "evaluate", evaluate_command), ("audit", "audit", audit_command)):
        holder = start("-c", HOLD, str(out), role)
        assert holder.stderr.readline() == "held\n", holder.stderr.read()
        try:
            assert command(str(tmp_path / "missing"), str(tmp_path / "missing.json"), str(out)) == 2
            assert capsys.readouterr().err.strip() == (
                f"error: cannot {verb}: {out} is in use by another process ({role} lock .medgen-{role}.lock is "
                "held): wait for it to finish, or write to another folder (OUT_DIR)")
            if role == "evaluation":  # the bundle's evaluate.yaml runs this component
                with pytest.raises(SystemExit, match=rf"^medgen: error: cannot evaluate: {out} is in use"):
                    Evaluation(str(tmp_path / "missing"), str(tmp_path / "missing.json"), str(out), {})()
        finally:
            kill(holder)
        assert command(str(tmp_path / "missing"), str(tmp_path / "missing.json"), str(out)) == 2  # free: now it reads
        assert "in use" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_training_or_sampling_job_into_a_folder_in_use_stops_in_one_line(kermany: Path, tmp_path: Path):
    run_dir = tmp_path / "runs" / "cxr_ddpm" / "shared-name"
    common = ["-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN), "--dataset_dir", str(kermany),
              "--runs_dir", str(tmp_path / "runs"), "--run_name", "shared-name", *TINY]
    first = start(*common, "--max_epochs", "100000", "--checkpoint_interval", "1", "--time_limit", "1500")
    try:
        wait_for(lambda: list(run_dir.glob("checkpoints/checkpoint_epoch=*.pt")), first, "first checkpoint")
        second = run(*common, "--max_epochs", "1", "--resume", "False")
        line = one_line_error(second)
        assert line == (f"medgen: error: cannot train: {run_dir} is in use by another process (run lock "
                        ".medgen-run.lock is held): wait for it to finish, or train into another folder with "
                        "--run_name NAME or --output_dir DIR"), line
        assert first.poll() is None, "the first training was disturbed"
        assert not list((run_dir / "checkpoints").glob("replaced-*"))  # its --resume False set nothing aside
    finally:
        kill(first)
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    # the holder was killed mid-run: the folder is free at once; a fresh start sets its checkpoints aside, not lost
    third = run(*common, "--max_epochs", "1", "--resume", "False")
    assert third.returncode == 0, third.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("checkpoints/replaced-*/*.pt")) == kept

    # sampling: a long job writes into a folder; a second job into it stops in one line, then runs once it is free
    samples = tmp_path / "samples"
    sample = ["-m", "medgen.cli", "sample", "cxr_ddpm", "--ckpt", str(run_dir / "model.pt"), "--out", str(samples),
              "--sampler", "ddim", "--steps", "50"]
    long_job = start(*sample, "--per-class", "5000", "--batch-size", "1")  # its first image is written soon
    try:
        wait_for(lambda: (samples / "samples.jsonl").is_file() and (samples / "samples.jsonl").stat().st_size > 0,
                 long_job, "first sample")
        second = run(*sample, "--per-class", "2")
        line = one_line_error(second)
        assert line.startswith(f"medgen: error: cannot sample: {samples} is in use by another process"), line
        assert line.endswith("write to another folder (--out DIR, --output_dir DIR)"), line
        shard = one_line_error(run(*sample, "--per-class", "2", "--shard", "1/2"))  # its seeds are the long job's too
        assert shard.startswith(f"medgen: error: cannot sample: {samples} is in use by another process (samples "
                                "lock .medgen-samples.lock is held)"), shard
        assert long_job.poll() is None, "the first sampling job was disturbed"
    finally:
        kill(long_job)
    done = run(*sample, "--per-class", "2", "--seed", "100000")  # its own seeds: the long job numbered per 5000
    assert done.returncode == 0, done.stderr[-3000:]
    seeds = [(r["label"], r["seed"]) for r in map(json.loads, (samples / "samples.jsonl").read_text().splitlines())]
    assert len(seeds) == len(set(seeds)) and len(seeds) >= 5  # every seed once
    assert {(0, 100000), (0, 100001), (1, 100002), (1, 100003)} <= set(seeds)
