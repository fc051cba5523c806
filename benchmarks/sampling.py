"""Sampling speed, quality and memory: the MONAI tutorial way against medgen's pipeline, on the bundle's network.

    python -m benchmarks.sampling            # 64 and 128 px, then quality at 64 px and memory for 16 vs 256 images
    python -m benchmarks.sampling --quick    # a short run

Rows: (a) the MONAI tutorial way, DDPM 1000 steps via ``DiffusionInferer.sample`` in fp32; (b) MONAI DDIM-50 fp32
(same inferer); (c) medgen's ``DiffusionPipeline`` (its own compute path: bf16 autocast + channels_last on CPUs with
bf16) at DDIM-50 and at the solver's default steps. Long runs are timed over ``--measure-steps`` steps and
extrapolated per step (the table says so); per-step cost is the same at every step of these samplers. Methods are
timed in turn, round after round, so load from other processes slows them alike; ratios are within one run.
Quality: images from the same seeds by (b) and (c), compared with each other, with a converged reference
(DPM-Solver++ 2M, 100 steps, fp32) and, when ``medgen.metrics`` and its Inception weights are there, by FID against
real test images.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from benchmarks.common import (
    REPO,
    best,
    bundle_network,
    forward_flops,
    interleaved,
    machine,
    matmul_peak,
    table,
    write_json,
)
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.diffusion.solvers import DEFAULT_STEPS

CLASSES = ["NORMAL", "PNEUMONIA"]


class LabelledNetwork(torch.nn.Module):
    """The network with fixed class labels, called the way ``DiffusionInferer.sample`` calls a model."""

    def __init__(self, network: torch.nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.labels = labels

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(x, timesteps.long().expand(x.shape[0]), class_labels=self.labels)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=0.0001, beta_end=0.02)


def monai_sample(model: torch.nn.Module, noise: torch.Tensor, scheduler: DDPMScheduler | DDIMScheduler,
                 total_steps: int, measured_steps: int | None = None) -> torch.Tensor:
    """The tutorial: ``scheduler.set_timesteps``; ``DiffusionInferer.sample``; fp32, ``torch.no_grad``."""
    scheduler.set_timesteps(total_steps)
    if measured_steps is not None:
        scheduler.timesteps = scheduler.timesteps[:measured_steps]
    with torch.no_grad():
        return DiffusionInferer(scheduler).sample(input_noise=noise, diffusion_model=model, scheduler=scheduler,
                                                  verbose=False)


class _Enough(Exception):
    pass


def medgen_sample(pipe: DiffusionPipeline, labels: list[int], seeds: list[int], sampler: str, total_steps: int,
                  measured_steps: int | None = None) -> torch.Tensor | None:
    """The pipeline's own loop, stopped after ``measured_steps`` when timing."""

    def stop(step: int, _steps: int) -> None:
        if measured_steps is not None and step >= measured_steps:
            raise _Enough

    try:
        return pipe.generate_batch(labels, seeds, total_steps, sampler=sampler, callback=stop)
    except _Enough:
        return None


def speed(net: torch.nn.Module, size: int, batch: int, measure: int, repeats: int, solver: str,
          peaks: dict[str, float], with_fp32_solver: bool) -> list[dict[str, Any]]:
    seeds = list(range(batch))
    labels = [s % 2 for s in seeds]
    fast = DiffusionPipeline(_copy(net), train_scheduler(), CLASSES, size, batch_size=batch, precision="auto")
    plain = DiffusionPipeline(_copy(net), train_scheduler(), CLASSES, size, batch_size=batch, precision="fp32",
                              channels_last=False)
    noise = plain.initial_noise(seeds)
    model = LabelledNetwork(plain.network, torch.tensor(labels))
    solver_steps = DEFAULT_STEPS[solver]
    runs: dict[str, tuple[str, int, str, Any]] = {
        "(a) MONAI tutorial DDPM": ("ddpm", 1000, "fp32",
                                    lambda: monai_sample(model, noise, DDPMScheduler(), 1000, measure)),
        "(b) MONAI DDIM": ("ddim", 50, "fp32", lambda: monai_sample(model, noise, DDIMScheduler(), 50, measure)),
        "(c) medgen DDIM": ("ddim", 50, fast.compute_path,
                            lambda: medgen_sample(fast, labels, seeds, "ddim", 50, measure)),
        f"(c) medgen {solver}": (solver, solver_steps, fast.compute_path,
                                 lambda: medgen_sample(fast, labels, seeds, solver, solver_steps, measure)),
    }
    if with_fp32_solver:
        runs[f"    medgen {solver} fp32"] = (solver, solver_steps, plain.compute_path,
                                             lambda: medgen_sample(plain, labels, seeds, solver, solver_steps,
                                                                   measure))
    times = interleaved({name: run[3] for name, run in runs.items()}, repeats)
    flops = forward_flops(plain.network, size)
    rows = []
    for name, (sampler, steps, path, _) in runs.items():
        per_step = best(times[name]) / measure
        per_image = per_step * steps / batch
        fp32 = "fp32" in path
        achieved = flops * batch / per_step / 1e9
        peak = peaks["fp32" if fp32 else "bf16"]
        rows.append({"size": size, "method": name, "sampler": sampler, "steps": steps, "compute": path,
                     "batch": batch, "s/step": per_step, "s/image": per_image, "images/s": 1 / per_image,
                     "GFLOP/image": flops * steps / 1e9, "GFLOP/s": achieved, "peak GFLOP/s": peak,
                     "peak/achieved": peak / achieved,
                     "timed": f"{measure} of {steps} steps, extrapolated" if measure < steps else "full run",
                     "times_s": times[name]})
    a, b = rows[0]["s/image"], rows[1]["s/image"]
    for row in rows:
        row["x vs (a)"] = a / row["s/image"]
        row["x vs (b)"] = b / row["s/image"]
    return rows


def _copy(net: torch.nn.Module) -> torch.nn.Module:
    """A private copy (a pipeline may switch its network to channels_last in place)."""
    return copy.deepcopy(net).eval()


def quality(net: torch.nn.Module, size: int, count: int, solver: str, reference_steps: int,
            with_fid: bool) -> dict[str, Any]:
    """(b) and (c) from the same seeds: mean |difference| to each other and to a converged ODE solution; FID."""
    seeds = list(range(1000, 1000 + count))
    labels = [s % 2 for s in seeds]
    fast = DiffusionPipeline(_copy(net), train_scheduler(), CLASSES, size, batch_size=count)
    plain = DiffusionPipeline(_copy(net), train_scheduler(), CLASSES, size, batch_size=count,
                              precision="fp32", channels_last=False)
    noise = plain.initial_noise(seeds)
    model = LabelledNetwork(plain.network, torch.tensor(labels))
    images = {
        "(b) MONAI DDIM-50 fp32": monai_sample(model, noise, DDIMScheduler(), 50).clamp(-1, 1),
        "(c) medgen DDIM-50": medgen_sample(fast, labels, seeds, "ddim", 50),
        f"(c) medgen {solver}-{DEFAULT_STEPS[solver]}": medgen_sample(fast, labels, seeds, solver,
                                                                      DEFAULT_STEPS[solver]),
    }
    reference = medgen_sample(plain, labels, seeds, solver, reference_steps)
    b = images["(b) MONAI DDIM-50 fp32"]
    rows = []
    for name, imgs in images.items():
        rows.append({"method": name, "compute": plain.compute_path if "fp32" in name else fast.compute_path,
                     "MAD vs (b)": float((imgs - b).abs().mean()),
                     f"MAD vs ref ({solver}-{reference_steps} fp32)": float((imgs - reference).abs().mean()),
                     "FID vs real": None, "FID vs (b)": None})
    note = "FID not computed (--no-fid)"
    if with_fid:
        note = _add_fid(rows, images, size, count)
    return {"size": size, "images": count, "seeds": [seeds[0], seeds[-1]], "rows": rows, "fid_note": note}


def _add_fid(rows: list[dict], images: dict[str, torch.Tensor], size: int, count: int) -> str:
    try:
        from medgen.metrics.distribution import fid
        from medgen.metrics.features import InceptionFeatures
        from medgen.metrics.image_sets import load_items

        extractor = InceptionFeatures()
        test_dir = REPO.parent / "shared" / "data" / "chest_xray_kermany_224" / "test"
        items = [{"image": str(p), "label": label} for label, name in enumerate(CLASSES)
                 for p in sorted((test_dir / name).glob("*"))[: (count + 1) // 2]]
        real_features = extractor(load_items(items, CLASSES, size=size).images)
        feats = {name: extractor(((imgs + 1) / 2).numpy().astype(np.float32)) for name, imgs in images.items()}
        b = feats["(b) MONAI DDIM-50 fp32"]
        for row in rows:
            row["FID vs real"] = fid(real_features, feats[row["method"]])
            row["FID vs (b)"] = fid(b, feats[row["method"]])
        return (f"FID with medgen.metrics (TF-FID Inception) on {count} images per set: far too few for absolute "
                "values, comparable only with each other")
    except Exception as err:  # the metrics package is another engineer's work in progress
        return f"FID n/a: {type(err).__name__}: {str(err)[:200]}"


def memory_child(count: int, size: int, steps: int, batch: int, solver: str) -> dict[str, Any]:
    """One sampling job of ``count`` images into a temporary folder; this process's peak RSS."""
    from medgen.diffusion.sample_run import SampleRunner

    net, _ = bundle_network()
    pipe = DiffusionPipeline(net, train_scheduler(), CLASSES, size, batch_size=batch)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        SampleRunner(pipe, tmp, per_class=count // 2, sampler=solver, num_inference_steps=steps).run()
        written = len(list(Path(tmp).rglob("*.png"))) - 2  # minus the two class grids
    return {"images": count, "written": written, "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "seconds": time.perf_counter() - start, "size": size, "steps": steps, "batch": batch}


def memory(counts: list[int], size: int, steps: int, batch: int, solver: str) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        cmd = [sys.executable, "-m", "benchmarks.sampling", "--memory-child", str(count), "--memory-size", str(size),
               "--memory-steps", str(steps), "--memory-batch", str(batch), "--solver", solver]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass in the speed runs")
    parser.add_argument("--measure-steps", type=int, default=3, help="steps timed per run (then extrapolated)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of interleaved timing")
    parser.add_argument("--solver", default="dpmpp2m")
    parser.add_argument("--ckpt", help="trained weights (default: the bundle's models/model.pt if present)")
    parser.add_argument("--quality-images", type=int, default=8, help="0 skips the quality comparison")
    parser.add_argument("--quality-size", type=int, default=64)
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--no-fid", action="store_true")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[16, 256])
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="batch 2, 1 timed step, 2 rounds, 4 quality images")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_size, args.memory_steps, args.memory_batch,
                                      args.solver)))
        return 0
    if args.quick:
        args.batch, args.measure_steps, args.repeats = 2, 1, 2
        args.quality_images, args.reference_steps = min(args.quality_images, 4), 50

    info = machine()
    net, weights = bundle_network(args.ckpt)
    peaks = {"fp32": max(matmul_peak(torch.float32) for _ in range(2)),
             "bf16": max(matmul_peak(torch.bfloat16) for _ in range(2))}
    print(f"machine: {info['cpu']}, {info['cores']} cores, bf16: {info['cpu_bf16']}, torch {info['torch']}, "
          f"load average {info['load_average_1m']:.1f} (other jobs share the cores: absolute figures are slower "
          f"than on an idle machine; ratios are measured within this run)")
    print(f"weights: {weights}")
    print(f"matmul peak (2048^2): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s\n")

    rows = []
    for size in args.sizes:
        rows += speed(net, size, args.batch, args.measure_steps, args.repeats, args.solver, peaks, True)
    columns = ["size", "method", "steps", "compute", "batch", "s/image", "images/s", "x vs (a)", "x vs (b)",
               "GFLOP/image", "GFLOP/s", "peak/achieved", "timed"]
    print(table(rows, columns))

    result: dict[str, Any] = {"machine": info, "weights": weights, "matmul_peak_GFLOPs": peaks, "speed": rows}
    if args.quality_images:
        q = quality(net, args.quality_size, args.quality_images, args.solver, args.reference_steps, not args.no_fid)
        result["quality"] = q
        print(f"\nquality at {q['size']}px, {q['images']} images, seeds {q['seeds'][0]}..{q['seeds'][1]} "
              f"(weights: {weights}); images in [-1, 1]")
        print(table(q["rows"], list(q["rows"][0])))
        print(q["fid_note"])
    if args.memory_counts:
        m = memory(args.memory_counts, args.memory_size, args.memory_steps, args.memory_batch, args.solver)
        result["memory"] = m
        print(f"\npeak RSS while sampling (SampleRunner writes images as they are made; {args.solver}, "
              f"{args.memory_steps} steps, {args.memory_size}px, batch {args.memory_batch})")
        print(table(m, ["images", "written", "peak_rss_MB", "seconds"]))
    path = write_json("sampling_quick" if args.quick else "sampling", result, args.out)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
