"""DDP training with multi_gpu_train.yaml (2 processes, gloo, CPU) and the training speed switches of train.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from medgen.engine.checkpoints import ResumeFromLatest
from medgen.engine.distributed import ReplicaSyncCheck, handlers_for_rank, weights_digest
from medgen.networks import ConditionalDiffusionUNet

REPO = Path(__file__).resolve().parents[2]
DATA = (Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data")) / "chest_xray_kermany_224").resolve()
BUNDLE = REPO / "bundles" / "cxr_ddpm" / "configs"
TINY = [
    "--dataset_dir",
    str(DATA),
    "--max_items_per_class",
    "4",
    "--image_size",
    "32",
    "--batch_size",
    "2",
    "--num_workers",
    "0",
    "--samples_per_class_in_grid",
    "1",
    "--checkpoint_interval",
    "1",
]

needs_data = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"needs the Kermany chest X-rays at {DATA} (set MEDGEN_TEST_DATA)")


def torchrun(out: Path, max_epochs: int, nproc: int = 2, *extra: str) -> subprocess.CompletedProcess:
    configs = f"['{BUNDLE / 'train.yaml'}','{BUNDLE / 'multi_gpu_train.yaml'}']"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        configs,
        *TINY,
        "--max_epochs",
        str(max_epochs),
        "--output_dir",
        str(out),
        "--model_path",
        str(out / "model.pt"),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.integration
@needs_data
def test_two_gloo_processes_keep_identical_weights_and_resume(tmp_path: Path) -> None:
    first = torchrun(tmp_path, max_epochs=1)
    sync = jsonl(tmp_path / "replica_sync.jsonl")
    assert [(r["epoch"], r["world_size"], r["in_sync"]) for r in sync] == [(1, 2, True)]
    assert len(set(sync[0]["digests"])) == 1
    assert "training from scratch" in first.stderr + first.stdout

    # rank 0 alone wrote the checkpoint, as a plain (unwrapped) state dict that loads into a single-process network
    ckpt = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    ConditionalDiffusionUNet(num_classes=2).load_state_dict(ckpt["model"])
    assert ckpt["trainer"]["iteration"] == 2  # 8 images over 2 ranks, batch 2

    second = torchrun(tmp_path, max_epochs=2)
    log = second.stderr + second.stdout
    assert log.count("resumed from") == 2 and "at epoch 1" in log  # both ranks restored the same checkpoint
    sync = jsonl(tmp_path / "replica_sync.jsonl")
    assert [(r["epoch"], r["in_sync"]) for r in sync] == [(1, True), (2, True)]
    assert [r["epoch"] for r in jsonl(tmp_path / "loss.jsonl")] == [1, 2]  # one loss file line per epoch: rank 0 only
    final = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert final["trainer"]["iteration"] == 4
    # 8 images, 2 ranks, batch 2: 2 optimizer steps per epoch on each rank, 4 after the resumed epoch
    assert max(int(s["step"]) for s in final["optimizer"]["state"].values()) == 4


@pytest.mark.slow
@pytest.mark.integration
@needs_data
def test_class_balanced_drawing_splits_an_epoch_across_ranks(tmp_path: Path) -> None:
    run = torchrun(tmp_path, 1, 2, "--class_balanced", "True")
    assert (run.stdout + run.stderr).count("class-balanced drawing: 8 items of labels {0: 4, 1: 4}") == 2
    ckpt = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 2  # MONAI's DistributedWeightedRandomSampler: 8 images, 4 per rank, batch 2
    sync = jsonl(tmp_path / "replica_sync.jsonl")
    assert [(r["epoch"], r["world_size"], r["in_sync"]) for r in sync] == [(1, 2, True)]


@pytest.mark.slow
@pytest.mark.integration
@needs_data
def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path: Path) -> None:
    """train.yaml's ``gradient_accumulation`` reaches SupervisedTrainer: 4 batches, accumulation 2 -> 2 steps."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(BUNDLE / "train.yaml"),
        *TINY,
        "--max_epochs",
        "1",
        "--gradient_accumulation",
        "2",
        "--precision",
        "bf16",
        "--output_dir",
        str(tmp_path),
        "--model_path",
        str(tmp_path / "model.pt"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 4
    assert max(int(s["step"]) for s in ckpt["optimizer"]["state"].values()) == 2


def test_single_process_keeps_every_handler_and_checks_itself(tmp_path: Path) -> None:
    handlers = [ResumeFromLatest(tmp_path, {}), object()]
    assert handlers_for_rank(handlers) == handlers  # rank 0 of 1
    net = ConditionalDiffusionUNet(
        channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=8
    )
    check = ReplicaSyncCheck(net, path=tmp_path / "sync.jsonl")
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 3
    check(engine)
    assert jsonl(tmp_path / "sync.jsonl") == [
        {"epoch": 3, "world_size": 1, "digests": [weights_digest(net)], "in_sync": True}
    ]


def test_weights_digest_sees_a_one_bit_change_and_ignores_the_ddp_wrapper() -> None:
    net = ConditionalDiffusionUNet(
        channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=8
    )
    before = weights_digest(net)

    class Wrapped(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert weights_digest(Wrapped(net)) == before
    with torch.no_grad():
        weight = net.conv_in.conv.weight.view(-1)
        weight[0] = torch.nextafter(weight[0], torch.tensor(float("inf")))
    assert weights_digest(net) != before


def test_every_rank_steps_its_learning_rate_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks other than 0 drop logging and checkpoint handlers but keep the LR schedule (else with a cosine schedule
    each replica would train at a different rate)."""
    from monai.handlers import LrScheduleHandler, StatsHandler

    import medgen.engine.distributed as distributed

    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    schedule = LrScheduleHandler(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5), print_lr=False)
    stats = StatsHandler()
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.handlers_for_rank([schedule, stats]) == [schedule]
