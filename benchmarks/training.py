"""Training speed: a plain fp32 loop as in the MONAI generative tutorial against medgen's engine, same network.

    python -m benchmarks.training            # the bundle's network at 64 px, batch 16, real images
    python -m benchmarks.training --quick    # a short run

Rows: the tutorial loop (``DiffusionInferer``, MSE on ε, AdamW, fp32) and the bundle's engine as train.yaml builds it
(MONAI ``SupervisedTrainer`` + ``ConditionalDiffusionPrepareBatch`` + ``ConditionalDiffusionInferer`` with its compute
path: bf16 autocast where the CPU/GPU has bf16; fused AdamW; the EMA update), with and without channels_last. Both
read the same ``CacheDataset`` (images decoded and resized once). Methods are timed in turn, ``--iters`` iterations
each, round after round, so load from other processes slows them alike; ratios are within one run.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from benchmarks.common import (
    BUNDLE,
    CLASSES,
    REPO,
    best,
    bundle_network,
    count_flops,
    interleaved,
    machine,
    matmul_peak,
    table,
    write_json,
)
from medgen.diffusion.precision import resolve_dtype

DATA = REPO.parent / "shared" / "data" / "chest_xray_kermany_224" / "train"


def dataset(size: int, per_class: int) -> tuple[CacheDataset, str]:
    """Real chest X-rays through the bundle's transforms, cached; random images when the data is missing."""
    from medgen.data.transforms import diffusion_transforms

    items = [
        {"image": str(p), "label": label}
        for label, name in enumerate(CLASSES)
        for p in sorted((DATA / name).glob("*.jpeg"))[:per_class]
    ]
    if items:
        return CacheDataset(
            items, diffusion_transforms(size), cache_rate=1.0, num_workers=2, progress=False
        ), f"{len(items)} images from {DATA}"
    g = torch.Generator().manual_seed(0)
    fake = [{"image": torch.rand(1, size, size, generator=g) * 2 - 1, "label": i % 2} for i in range(2 * per_class)]
    return CacheDataset(fake, transform=None, progress=False), "random images (data not found)"


def tutorial_loop(net: torch.nn.Module, loader: DataLoader, iters: int) -> Callable[[], None]:
    """The MONAI tutorial's training step, in fp32 on the CPU."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)

    def run() -> None:
        net.train()
        for i, batch in enumerate(loader):
            if i == iters:
                break
            images = batch["image"]
            optimizer.zero_grad(set_to_none=True)
            noise = torch.randn_like(images)
            timesteps = torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],)).long()
            noise_pred = inferer(inputs=images, diffusion_model=net, noise=noise, timesteps=timesteps)
            loss = F.mse_loss(noise_pred.float(), noise.float())
            loss.backward()
            optimizer.step()

    return run


def medgen_engine(net: torch.nn.Module, loader: DataLoader, iters: int, precision: str) -> Callable[[], None]:
    """The bundle's own trainer, parsed from train.yaml (``train#trainer``: SupervisedTrainer, the class-label glue,
    its compute path, its optimizer settings and the EMA handler), run for ``iters`` iterations on ``loader``.
    Checkpoints, grids and logging are left out: they run every few epochs, not every step."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser["network"] = net
    parser["device"] = torch.device("cpu")
    parser["precision"] = precision
    parser["train#dataloader"] = loader
    parser["train#handlers"] = ["@ema"]
    parser["train#trainer#max_epochs"] = 1
    parser["train#trainer#epoch_length"] = iters
    trainer = parser.get_parsed_content("train#trainer")

    def run() -> None:
        # ignite's own run: a finished engine restarted through Workflow.run would take len(loader) iterations
        Engine.run(trainer, loader, max_epochs=1, epoch_length=iters)

    return run


def train_flops(net: torch.nn.Module, size: int) -> int:
    """FLOPs of one image's training step (forward and backward)."""
    net = copy.deepcopy(net).train()
    x = torch.randn(1, 1, size, size)

    def step() -> None:
        net(x, torch.zeros(1, dtype=torch.long), class_labels=torch.zeros(1).long()).square().mean().backward()

    return count_flops(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=16, help="the bundle's batch_size")
    parser.add_argument("--iters", type=int, default=3, help="iterations per method per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of interleaved timing")
    parser.add_argument("--images-per-class", type=int, default=32)
    parser.add_argument("--ckpt", help="weights to start from (default: the bundle's, else random init)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 iteration, 2 rounds")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); on a shared, busy machine 1 avoids threads waiting for each other",
    )
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.iters, args.repeats, args.images_per_class = 4, 1, 2, 4

    info = machine()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    net, weights = bundle_network(args.ckpt)
    auto = resolve_dtype("cpu", "auto")
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, bf16: {info['cpu_bf16']}, torch {info['torch']}, "
        f"load average {info['load_average_1m']:.1f} (other jobs share the cores: absolute figures are slower "
        f"than on an idle machine; ratios are measured within this run)"
    )
    print(f"matmul peak (2048^2): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s\n")

    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        data, source = dataset(size, args.images_per_class)
        loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0)
        if len(loader) < args.iters:
            raise SystemExit(
                f"{len(data)} images make {len(loader)} batches of {args.batch}; raise "
                f"--images-per-class or lower --iters"
            )
        channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
        runs = {
            "MONAI tutorial loop (fp32)": ("fp32", tutorial_loop(copy.deepcopy(net), loader, args.iters)),
            "medgen engine (auto)": ("auto", medgen_engine(copy.deepcopy(net), loader, args.iters, "auto")),
            "medgen engine (auto) + channels_last": ("auto", medgen_engine(channels_last, loader, args.iters, "auto")),
        }
        times = interleaved({name: run for name, (_, run) in runs.items()}, args.repeats)
        flops = train_flops(net, size)
        for name, (precision, _) in runs.items():
            seconds = best(times[name])
            images_per_s = args.iters * args.batch / seconds
            bf16 = precision == "auto" and auto is not None
            achieved = flops * images_per_s / 1e9
            rows.append(
                {
                    "size": size,
                    "method": name,
                    "compute": "bf16-autocast" if bf16 else "fp32",
                    "batch": args.batch,
                    "images/s": images_per_s,
                    "s/image": 1 / images_per_s,
                    "GFLOP/image": flops / 1e9,
                    "GFLOP/s": achieved,
                    "peak/achieved": peaks["bf16" if bf16 else "fp32"] / achieved,
                    "data": source,
                    "times_s": times[name],
                }
            )
        base = rows[-3]["images/s"]
        for row in rows[-3:]:
            row["x vs loop"] = row["images/s"] / base
    print(
        table(
            rows,
            [
                "size",
                "method",
                "compute",
                "batch",
                "images/s",
                "s/image",
                "x vs loop",
                "GFLOP/image",
                "GFLOP/s",
                "peak/achieved",
            ],
        )
    )
    print(f"data: {rows[0]['data']}; weights: {weights}")
    path = write_json(
        "training_quick" if args.quick else "training",
        {"machine": info, "weights": weights, "matmul_peak_GFLOPs": peaks, "rows": rows},
        args.out,
    )
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
