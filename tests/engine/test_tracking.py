"""Experiment tracking of the training configs: TensorBoard event files and MLflow runs, read back with TensorBoard's
own ``EventAccumulator`` and MLflow's ``MlflowClient``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ignite.engine import Engine, Events
from PIL import Image

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from medgen.diffusion.objectives import warmup_cosine_factor  # noqa: E402
from medgen.engine.tracking import FreshEpochMetrics, TensorBoardGrids, mlflow_uri, summary_writer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["--image_size", "32", "--unet_channels", "[8,16]", "--attention_levels", "[False,True]",
        "--num_res_blocks", "1", "--norm_num_groups", "4", "--network_def#num_head_channels", "8"]


def events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ---- the glue, on a real ignite engine and a real event file -------------------------------------------------------
def test_interval_metric_is_logged_only_at_the_epochs_that_computed_it(tmp_path):
    """ignite keeps ``state.metrics`` across epochs: without FreshEpochMetrics an FID of epoch 2 is logged again,
    stale, at epoch 3."""
    from monai.handlers import TensorBoardStatsHandler

    engine = Engine(lambda e, b: {"loss": float(b)})

    @engine.on(Events.EPOCH_COMPLETED)
    def _metrics(e):
        e.state.metrics["train_loss_epoch"] = float(e.state.epoch)
        if e.state.epoch % 2 == 0:  # as PeriodicFID with fid_interval 2
            e.state.metrics["fid"] = 100.0 / e.state.epoch

    FreshEpochMetrics().attach(engine)
    writer = summary_writer(tmp_path / "tb")
    assert summary_writer(tmp_path / "tb") is writer  # one writer (one event file) per folder
    TensorBoardStatsHandler(summary_writer=writer, iteration_log=False).attach(engine)
    engine.run([1.0, 2.0], max_epochs=5)
    acc = events(tmp_path / "tb")
    assert scalars(acc, "fid") == [(2, 50.0), (4, 25.0)]
    assert [s for s, _ in scalars(acc, "train_loss_epoch")] == [1, 2, 3, 4, 5]
    assert summary_writer(None) is None and summary_writer("null") is None  # `monai.bundle run --tensorboard_dir null`


def test_grids_are_logged_once_at_their_epoch_and_a_resumed_run_skips_earlier_ones(tmp_path):
    grids = tmp_path / "grids"
    grids.mkdir()

    def grid(epoch: int) -> None:
        Image.fromarray(np.full((20, 30), 40 * epoch, np.uint8)).save(grids / f"grid_epoch_{epoch:04d}.png")

    grid(1)
    grid(3)  # left by a later epoch of a killed run: not logged before its epoch comes round again
    writer = summary_writer(tmp_path / "tb")
    engine = Engine(lambda e, b: None)

    @engine.on(Events.STARTED)
    def _resumed(e):  # as ResumeFromLatest, which loads the checkpoint of epoch 1 when the run starts
        e.state.epoch = 1
        e.state.iteration = 1

    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: grid(e.state.epoch))  # as SampleGridHandler
    TensorBoardGrids(grids, writer).attach(engine)
    engine.run([0], max_epochs=3)
    images = events(tmp_path / "tb").Images("samples")
    assert [(i.step, i.width, i.height) for i in images] == [(2, 30, 20), (3, 30, 20)]


def test_mlflow_uri_takes_uris_as_given_and_a_path_as_an_sqlite_file(tmp_path):
    assert mlflow_uri(None) is None and mlflow_uri("") is None and mlflow_uri("null") is None
    assert mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    uri = mlflow_uri(tmp_path / "sub" / "mlflow.db")
    assert uri.startswith("sqlite:///") and uri.endswith("/sub/mlflow.db") and (tmp_path / "sub").is_dir()


def test_monai_tracking_keeps_one_run_folder(kermany, tmp_path, monkeypatch):
    """``--tracking mlflow`` evaluates ``output_dir`` before the run (to write the executed config there) and the run
    evaluates it again: both, and the config record's path, name the one new run folder."""
    from monai.bundle import ConfigWorkflow

    monkeypatch.setenv("MEDGEN_RUNS_DIR", str(tmp_path / "runs"))
    workflow = ConfigWorkflow(config_file=str(REPO / "bundles/cxr_ddpm/configs/train.yaml"), workflow_type="train",
                              tracking="mlflow", dataset_dir=str(kermany))
    workflow.initialize()
    out = Path(workflow.parser.get_parsed_content("output_dir"))
    assert Path(workflow.parser.get_parsed_content("save_execute_config")).parent == out
    assert [p.name for p in (tmp_path / "runs" / "cxr_ddpm").iterdir()] == [out.name]
    assert [p.name for p in out.glob("config_*.json")] and workflow.parser.get_parsed_content("tracking_uri") == \
        f"sqlite:///{out / 'mlruns.db'}"


# ---- the bundles, as a user runs them -----------------------------------------------------------------------------
def train(config: str, data: Path, out: Path | None, *extra: str, runs_dir: Path | None = None) -> None:
    where = ["--output_dir", str(out), "--model_path", str(out / "model.pt")] if out else []
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
           "--dataset_dir", str(data), *where,
           "--max_items_per_class", "4", "--batch_size", "4", "--max_epochs", "2", "--checkpoint_interval", "1",
           "--samples_per_class_in_grid", "2", "--num_workers", "0", *TINY, *extra]
    env = {**os.environ, **({"MEDGEN_RUNS_DIR": str(runs_dir)} if runs_dir else {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def loss_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


def mlflow_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
    (run,) = client.search_runs([exp.experiment_id])
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return client, run, history


@pytest.mark.slow
@pytest.mark.integration
def test_cxr_training_logs_loss_lr_grids_to_tensorboard_and_mlflow(kermany, tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    train("bundles/cxr_ddpm/configs/train.yaml", kermany, out, "--sample_interval", "5",
          "--lr_schedule", "cosine", "--lr_warmup_iters", "3", "--mlflow_tracking_uri", str(tmp_path / "mlflow.db"))

    # TensorBoard, on by default: <output_dir>/tensorboard, one event file
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    acc = events(out / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {"train_loss", "lr", "train_loss_epoch"}
    loss = scalars(acc, "train_loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4] and all(0 < v < 10 and math.isfinite(v) for _, v in loss)
    epochs = loss_lines(out)  # the epoch means are those of loss.jsonl, and the mean of the iteration values
    assert [(s, round(v, 5)) for s, v in scalars(acc, "train_loss_epoch")] == \
        [(r["epoch"], round(r["loss"], 5)) for r in epochs]
    assert scalars(acc, "train_loss_epoch")[0][1] == pytest.approx((loss[0][1] + loss[1][1]) / 2, rel=1e-5)
    # the rate each iteration leaves for the next: linear warm-up over 3 iterations, then cosine down to 0.1 x 2e-4
    lr = [v for _, v in scalars(acc, "lr")]
    assert lr == pytest.approx([2e-4 * warmup_cosine_factor(i, 3, 4, 0.1, "cosine") for i in (1, 2, 3, 4)], rel=1e-6)
    assert lr[0] < lr[1] and lr[-1] == pytest.approx(2e-5)
    (image,) = acc.Images("samples")  # the grid of the last epoch, as the PNG the run wrote
    grid = Image.open(out / "grids" / "grid_epoch_0002.png")
    assert (image.step, image.width, image.height) == (2, *grid.size) and grid.size[1] >= 2 * 32

    # MLflow, switched on with a path: an SQLite store, read back with MLflow's own client
    client, run, history = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "cxr_ddpm")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert [(s, round(v, 5)) for s, v in history["train_loss"]] == [(s, round(v, 5)) for s, v in loss]
    assert [v for _, v in history["lr_group_0"]] == pytest.approx(lr)
    assert [s for s, _ in history["train_loss_epoch"]] == [1, 2]
    params = run.data.params
    assert params["learning_rate"] == "0.0002" and params["image_size"] == "32" and params["max_epochs"] == "2"
    assert params["bundle"] == "cxr_ddpm" and params["unet_channels"] == "[8, 16]" and params["lr_schedule"] == "cosine"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["grid_epoch_0002.png"]


@pytest.mark.slow
@pytest.mark.integration
def test_brain_training_logs_fid_to_tensorboard_and_monai_tracking_mlflow(shared_data, tmp_path):
    """The FID of ``--fid_interval`` in the event file, and MONAI's own ``--tracking mlflow`` on this config: its
    store, the executed config and the run all in the one run folder."""
    pytest.importorskip("mlflow")
    data = shared_data / "brain_tumor_mri_224"
    train("bundles/brain_mri_score/configs/train.yaml", data, None, "--sigma_max", "37", "--sample_interval", "5",
          "--grid_inference_steps", "3", "--fid_interval", "2", "--fid_per_class", "2", "--tracking", "mlflow",
          runs_dir=tmp_path / "runs")
    (out,) = (tmp_path / "runs" / "brain_mri_score").iterdir()
    (executed,) = out.glob("config_*.json")  # MONAI's record of the executed config, beside the run's own files
    assert (out / "model.pt").is_file() and (out / "mlruns.db").is_file()

    acc = events(out / "tensorboard")
    assert {"train_loss", "lr", "train_loss_epoch", "fid"} <= set(acc.Tags()["scalars"])
    (fid_line,) = [json.loads(line) for line in (out / "fid.jsonl").read_text().splitlines()]
    assert scalars(acc, "fid") == [(2, pytest.approx(fid_line["fid"], rel=1e-5))] and fid_line["fid"] > 0
    assert [s for s, _ in scalars(acc, "train_loss")] == [1, 2, 3, 4]
    assert [v for _, v in scalars(acc, "lr")] == pytest.approx([2e-4] * 4)  # constant: no schedule here
    assert [i.step for i in acc.Images("samples")] == [2]

    # MONAI's default tracking settings: an SQLite store in the run folder, experiment "monai_experiment"
    client, run, history = mlflow_run(f"sqlite:///{out / 'mlruns.db'}", "monai_experiment")
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history["train_loss"]] == [1, 2, 3, 4]
    assert history["fid"] == [(2, pytest.approx(fid_line["fid"], rel=1e-5))]
    assert run.data.params["max_epochs"] == "2"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [executed.name]


@pytest.mark.slow
@pytest.mark.integration
def test_only_rank_0_of_a_multi_process_run_logs(kermany, tmp_path):
    """Two gloo processes (multi_gpu_train.yaml): one event file and one MLflow run, written by rank 0."""
    pytest.importorskip("mlflow")
    bundle = REPO / "bundles" / "cxr_ddpm" / "configs"
    configs = f"['{bundle / 'train.yaml'}','{bundle / 'multi_gpu_train.yaml'}']"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "training", "--config_file", configs, "--dataset_dir", str(kermany), "--output_dir", str(out),
           "--model_path", str(out / "model.pt"), "--max_items_per_class", "4", "--batch_size", "2",
           "--max_epochs", "1", "--samples_per_class_in_grid", "1", "--num_workers", "0", *TINY,
           "--mlflow_tracking_uri", str(tmp_path / "mlflow.db")]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "runs").exists()  # no stray writer on rank 1 (a SummaryWriter's default folder)
    acc = events(out / "tensorboard")
    assert [s for s, _ in scalars(acc, "train_loss")] == [1, 2]  # 4 images per class / 2 ranks / batch 2
    _, run, history = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "cxr_ddpm")
    assert run.info.status == "FINISHED" and [s for s, _ in history["train_loss"]] == [1, 2]
