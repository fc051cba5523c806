"""Sampling speed, quality and memory: the MONAI tutorial way against medgen's pipeline, on the bundle's network.

    python -m benchmarks.sampling            # 64 and 128 px, then quality at 64 px and memory for 16 vs 256 images
    python -m benchmarks.sampling --quick    # a short run

Rows: (a) the MONAI tutorial way, DDPM 1000 steps via ``DiffusionInferer.sample`` in fp32; (b) MONAI DDIM-50 fp32
(same inferer); (c) medgen's ``DiffusionPipeline`` (its own compute path: bf16 autocast + channels_last on CPUs with
bf16) at DDIM-50 and at the solver's default steps. Long runs are timed over ``--measure-steps`` steps and
extrapolated per step (the table says so); per-step cost is the same at every step of these samplers. Methods are
timed in turn, round after round, so load from other processes slows them alike; ratios are within one run.
Quality: (1) solver accuracy against the exact probability-flow ODE solution of a Gaussian fitted to real X-rays
(mean |difference|, RMSE, and FID against the exact images when ``medgen.metrics`` and its Inception weights are
there); (2) on the bundle's network, (b) against (c) from the same seeds (mean |difference|, FID), and bf16 against
fp32 for the same solver. With untrained weights (2) says little about image quality: pass ``--ckpt``.
Memory: peak RSS of ``SampleRunner`` jobs of 16 and 256 images, each in its own process.
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
    CLASSES,
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


def monai_sample(
    model: torch.nn.Module,
    noise: torch.Tensor,
    scheduler: DDPMScheduler | DDIMScheduler,
    total_steps: int,
    measured_steps: int | None = None,
) -> torch.Tensor:
    """The tutorial: ``scheduler.set_timesteps``; ``DiffusionInferer.sample``; fp32, ``torch.no_grad``."""
    scheduler.set_timesteps(total_steps)
    if measured_steps is not None:
        scheduler.timesteps = scheduler.timesteps[:measured_steps]
    with torch.no_grad():
        return DiffusionInferer(scheduler).sample(
            input_noise=noise, diffusion_model=model, scheduler=scheduler, verbose=False
        )


class _Enough(Exception):
    pass


def medgen_sample(
    pipe: DiffusionPipeline,
    labels: list[int],
    seeds: list[int],
    sampler: str,
    total_steps: int,
    measured_steps: int | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor | None:
    """The pipeline's own loop, stopped after ``measured_steps`` when timing."""

    def stop(step: int, _steps: int) -> None:
        if measured_steps is not None and step >= measured_steps:
            raise _Enough

    try:
        return pipe.generate_batch(labels, seeds, total_steps, guidance_scale, sampler=sampler, callback=stop)
    except _Enough:
        return None


def speed(
    net: torch.nn.Module,
    size: int,
    batch: int,
    measure: int,
    repeats: int,
    solver: str,
    solver_steps: list[int],
    peaks: dict[str, float],
    with_fp32_solver: bool,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    seeds = list(range(batch))
    labels = [s % 2 for s in seeds]
    fast, plain = pipelines(net, size, batch, device)
    noise = plain.initial_noise(seeds)
    model = LabelledNetwork(plain.network, torch.tensor(labels, device=device))
    runs: dict[str, tuple[str, int, str, Any]] = {
        "(a) MONAI tutorial DDPM": (
            "ddpm",
            1000,
            "fp32",
            lambda: monai_sample(model, noise, DDPMScheduler(), 1000, measure),
        ),
        "(b) MONAI DDIM": ("ddim", 50, "fp32", lambda: monai_sample(model, noise, DDIMScheduler(), 50, measure)),
        "(c) medgen DDIM": (
            "ddim",
            50,
            fast.compute_path,
            lambda: medgen_sample(fast, labels, seeds, "ddim", 50, measure),
        ),
    }
    for steps in solver_steps:
        runs[f"(c) medgen {solver}-{steps}"] = (
            solver,
            steps,
            fast.compute_path,
            lambda steps=steps: medgen_sample(fast, labels, seeds, solver, steps, measure),
        )
    if with_fp32_solver:
        runs[f"    medgen {solver}-{solver_steps[0]} fp32"] = (
            solver,
            solver_steps[0],
            plain.compute_path,
            lambda: medgen_sample(plain, labels, seeds, solver, solver_steps[0], measure),
        )
    times = interleaved({name: run[3] for name, run in runs.items()}, repeats)
    flops = forward_flops(net, size)
    rows = []
    for name, (sampler, steps, path, _) in runs.items():
        per_step = best(times[name]) / measure
        per_image = per_step * steps / batch
        fp32 = "fp32" in path
        achieved = flops * batch / per_step / 1e9
        peak = peaks["fp32" if fp32 else "bf16"]
        rows.append(
            {
                "size": size,
                "method": name,
                "sampler": sampler,
                "steps": steps,
                "compute": path,
                "batch": batch,
                "s/step": per_step,
                "s/image": per_image,
                "images/s": 1 / per_image,
                "GFLOP/image": flops * steps / 1e9,
                "GFLOP/s": achieved,
                "peak GFLOP/s": peak,
                "peak/achieved": peak / achieved,
                "timed": f"{measure} of {steps} steps, extrapolated" if measure < steps else "full run",
                "times_s": times[name],
            }
        )
    a, b = rows[0]["s/image"], rows[1]["s/image"]
    for row in rows:
        row["x vs (a)"] = a / row["s/image"]
        row["x vs (b)"] = b / row["s/image"]
    return rows


def forward_speed(
    net: torch.nn.Module, size: int, batches: list[int], repeats: int, peaks: dict[str, float], device: str = "cpu"
) -> list[dict[str, Any]]:
    """The network's forward pass alone (what a sampler step costs without the scheduler), fp32 and the fast path,
    at several batch sizes: achieved GFLOP/s (convolution and matmul FLOPs) against the measured matmul peak."""
    flops = forward_flops(net, size)
    rows = []
    for batch in batches:
        labels = torch.tensor([i % 2 for i in range(batch)], device=device)
        t = torch.full((1,), 500, device=device)
        for precision in ("fp32", "auto"):
            pipe = DiffusionPipeline(
                _copy(net), train_scheduler(), CLASSES, size, device=device, batch_size=batch, precision=precision
            )
            x = pipe.initial_noise(range(batch))

            def forward(
                pipe: DiffusionPipeline = pipe, x: torch.Tensor = x, t: torch.Tensor = t, labels: torch.Tensor = labels
            ) -> None:
                pipe.predict(x, t, labels, 1.0)

            with torch.inference_mode():
                seconds = best(interleaved({"f": forward}, repeats)["f"])
            peak = peaks["fp32" if pipe.dtype is None else "bf16"]
            achieved = flops * batch / seconds / 1e9
            row = {
                "size": size,
                "compute": pipe.compute_path,
                "batch": batch,
                "ms/image": 1000 * seconds / batch,
                "GFLOP/s": achieved,
                "peak GFLOP/s": peak,
                "peak/achieved": peak / achieved,
            }
            if device == "cpu":
                share = kernel_time_share(forward)
                row["conv+matmul share"] = share
                row["in conv+matmul: peak/achieved"] = peak / (achieved / share)
            rows.append(row)
    return rows


MATMUL_KERNELS = ("mkldnn_convolution", "convolution", "addmm", "bmm", "mm", "baddbmm", "flash_attention")


def kernel_time_share(fn: Any, repeats: int = 3) -> float:
    """Share of the CPU time spent in convolution / matmul kernels (the FLOPs counted), from PyTorch's profiler;
    the rest is normalisation, activations, softmax, copies and Python."""
    with torch.inference_mode():
        fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    kernels = sum(e.self_cpu_time_total for e in events if any(e.key.endswith(k) for k in MATMUL_KERNELS))
    return kernels / total if total else float("nan")


def equal_seed_fid(weights: str, out_dir: Path | None, rows: list[dict[str, Any]] | None = None) -> dict | None:
    """The FID rows of ``benchmarks.sampler_quality`` for the same weights (matched by sha256), with this run's speed-up
    of each method over (b); None when that benchmark has not been run on these weights."""
    from benchmarks.common import RESULTS, weights_digest

    path = (out_dir or RESULTS) / "sampler_quality.json"
    if not path.is_file():
        return None
    quality = json.loads(path.read_text())
    if not quality.get("rows") or quality.get("weights_sha256") != weights_digest(weights):
        return None
    return {
        "source": str(path),
        "images": quality["rows"][0]["images"],
        "real": 2 * quality["real_per_class"],
        "rows": quality["rows"],
    }


def pipelines(
    net: torch.nn.Module, size: int, batch: int, device: str = "cpu"
) -> tuple[DiffusionPipeline, DiffusionPipeline]:
    """Two pipelines over private copies of ``net``: medgen's compute path, and plain fp32 (the MONAI way)."""
    fast = DiffusionPipeline(_copy(net), train_scheduler(), CLASSES, size, device=device, batch_size=batch)
    plain = DiffusionPipeline(
        _copy(net),
        train_scheduler(),
        CLASSES,
        size,
        device=device,
        batch_size=batch,
        precision="fp32",
        channels_last=False,
    )
    return fast, plain


def _copy(net: torch.nn.Module) -> torch.nn.Module:
    """A private copy (a pipeline may switch its network to channels_last in place)."""
    return copy.deepcopy(net).eval()


class GaussianImageModel:
    """A Gaussian fitted to real X-rays (mean, top principal components, a small isotropic rest): its ε-prediction
    and the end point of its probability-flow ODE are known in closed form, so each solver's error against the exact
    solution can be measured on an image-like spectrum (no network, no clipping).
    """

    def __init__(self, images: torch.Tensor, alphas_cumprod: torch.Tensor, rest_variance: float = 1e-3) -> None:
        flat = images.reshape(len(images), -1).double()
        self.shape = images.shape[1:]
        self.mean = flat.mean(0)
        u, s, _ = torch.linalg.svd((flat - self.mean).T, full_matrices=False)
        self.basis = u  # D x k
        self.variances = s**2 / max(len(images) - 1, 1)
        self.rest = rest_variance
        self.alphas_cumprod = alphas_cumprod.double()

    def _apply(self, c: torch.Tensor, scale_k: torch.Tensor, scale_rest: float | torch.Tensor) -> torch.Tensor:
        """``C``-diagonal scaling of the centred ``c`` (B x D): ``scale_k`` on the components, ``scale_rest`` off."""
        coef = c @ self.basis
        return (coef * scale_k) @ self.basis.T + scale_rest * (c - coef @ self.basis.T)

    def _alpha_sigma(self, t: int) -> tuple[float, float]:
        acp = float(self.alphas_cumprod[t])
        return acp**0.5, (1 - acp) ** 0.5

    def epsilon(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a, s = self._alpha_sigma(t)
        flat = x.reshape(x.shape[0], -1).double()
        c = flat - a * self.mean
        v, r = self.variances, self.rest
        x0 = self.mean + self._apply(c, a * v / (a * a * v + s * s), a * r / (a * a * r + s * s))
        return ((flat - a * x0) / s).reshape(x.shape).float()

    def exact(self, noise: torch.Tensor, t_start: int) -> torch.Tensor:
        """Where the ODE takes ``noise`` (read as x at ``t_start``) at t = 0, then ``E[x0 | x_0]`` (the last step)."""
        (a1, s1), (a0, s0) = self._alpha_sigma(t_start), self._alpha_sigma(0)
        v, r = self.variances, self.rest
        c = noise.reshape(noise.shape[0], -1).double() - a1 * self.mean
        ode = self._apply(
            c, ((a0**2 * v + s0**2) / (a1**2 * v + s1**2)).sqrt(), ((a0**2 * r + s0**2) / (a1**2 * r + s1**2)) ** 0.5
        )
        x0 = self.mean + self._apply(ode, a0 * v / (a0**2 * v + s0**2), a0 * r / (a0**2 * r + s0**2))
        return x0.reshape(noise.shape).float()


def real_images(size: int, count: int, split: str = "train") -> torch.Tensor:
    """Chest X-rays (both classes) through the bundle's transforms, in [-1, 1]."""
    from medgen.data.transforms import diffusion_transforms

    folder = REPO.parent / "shared" / "data" / "chest_xray_kermany_224" / split
    transform = diffusion_transforms(size)
    paths = [p for name in CLASSES for p in sorted((folder / name).glob("*.jpeg"))[: (count + 1) // 2]]
    return torch.stack([torch.as_tensor(transform({"image": str(p)})["image"]) for p in paths])


def solve(model: GaussianImageModel, scheduler: Any, steps: int, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x, _ = scheduler.step(model.epsilon(x, int(t)), int(t), x)
    return x, int(scheduler.timesteps[0])


def solver_accuracy(
    size: int, count: int, data_images: int, solver: str, solver_steps: list[int], with_fid: bool
) -> dict[str, Any]:
    """Each sampler's distance to the exact ODE solution of a Gaussian fitted to real X-rays, same seeds."""
    from medgen.diffusion.pipeline import make_scheduler

    model = GaussianImageModel(real_images(size, data_images), train_scheduler().alphas_cumprod)
    noise = torch.stack(
        [torch.randn(1, size, size, generator=torch.Generator().manual_seed(s)) for s in range(2000, 2000 + count)]
    )
    runs: dict[str, Any] = {f"(b) MONAI DDIM-{n}": (DDIMScheduler(clip_sample=False), n) for n in (50, 20)}
    for n in sorted({*solver_steps, 10, 15, 20, 25}):
        sched = make_scheduler(solver, train_scheduler())
        sched.clip_sample = False
        runs[f"(c) medgen {solver}-{n}"] = (sched, n)
    rows, images, exact = [], {}, {}
    for name, (sched, steps) in runs.items():
        out, t_start = solve(model, sched, steps, noise)
        exact.setdefault(t_start, model.exact(noise, t_start))
        target = exact[t_start]
        images[name] = out
        rows.append(
            {
                "method": name,
                "steps": steps,
                "MAD vs exact": float((out - target).abs().mean()),
                "RMSE vs exact": float((out - target).square().mean().sqrt()),
                "max|diff| vs exact": float((out - target).abs().max()),
                "FID vs exact": None,
            }
        )
    note = "FID not computed (--no-fid)"
    if with_fid:
        note = _add_fid(rows, images, exact[max(exact)])
    return {"size": size, "images": count, "data_images": data_images, "rows": rows, "fid_note": note}


def network_quality(
    net: torch.nn.Module, size: int, count: int, solver: str, steps: int, with_fid: bool
) -> dict[str, Any]:
    """(b) and (c) on the bundle's network from the same seeds: mean |difference| and FID between them."""
    seeds = list(range(3000, 3000 + count))
    labels = [s % 2 for s in seeds]
    fast, plain = pipelines(net, size, count)
    model = LabelledNetwork(plain.network, torch.tensor(labels))
    images = {
        "(b) MONAI DDIM-50 fp32": monai_sample(model, plain.initial_noise(seeds), DDIMScheduler(), 50).clamp(-1, 1),
        f"(c) medgen DDIM-50 {fast.compute_path}": medgen_sample(fast, labels, seeds, "ddim", 50),
        f"(c) medgen {solver}-{steps} {fast.compute_path}": medgen_sample(fast, labels, seeds, solver, steps),
        f"    medgen {solver}-{steps} fp32": medgen_sample(plain, labels, seeds, solver, steps),
    }
    b = images["(b) MONAI DDIM-50 fp32"]
    rows = [
        {"method": name, "MAD vs (b)": float((x - b).abs().mean()), "FID vs (b)": None} for name, x in images.items()
    ]
    rows.append(
        {
            "method": f"bf16 vs fp32, both medgen {solver}-{steps}",
            "MAD vs (b)": float(
                (
                    images[f"(c) medgen {solver}-{steps} {fast.compute_path}"]
                    - images[f"    medgen {solver}-{steps} fp32"]
                )
                .abs()
                .mean()
            ),
        }
    )
    note = "FID not computed (--no-fid)"
    if with_fid:
        note = _add_fid(rows[:-1], images, b, column="FID vs (b)")
    return {"size": size, "images": count, "seeds": [seeds[0], seeds[-1]], "rows": rows, "fid_note": note}


def _add_fid(
    rows: list[dict], images: dict[str, torch.Tensor], reference: torch.Tensor, column: str = "FID vs exact"
) -> str:
    try:
        from medgen.metrics.distribution import fid
        from medgen.metrics.features import InceptionFeatures

        extractor = InceptionFeatures()

        def features(x: torch.Tensor) -> np.ndarray:
            return extractor(((x + 1) / 2).clamp(0, 1).numpy().astype(np.float32))

        ref = features(reference)
        for row in rows:
            row[column] = fid(ref, features(images[row["method"]]))
        return (
            f"FID: medgen.metrics (TF-FID Inception) on {len(reference)} images per set; too few for absolute "
            "values, compare rows with each other"
        )
    except Exception as err:  # the metrics package is another engineer's work in progress
        return f"FID n/a: {type(err).__name__}: {str(err)[:200]}"


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: ``VmHWM`` (per address space, so not the parent's peak, which
    ``ru_maxrss`` carries across fork and exec); elsewhere ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(count: int, size: int, steps: int, batch: int, solver: str) -> dict[str, Any]:
    """One sampling job of ``count`` images into a temporary folder; this process's peak RSS."""
    from medgen.diffusion.sample_run import SampleRunner

    net, _ = bundle_network()
    pipe = DiffusionPipeline(net, train_scheduler(), CLASSES, size, batch_size=batch)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        SampleRunner(pipe, tmp, per_class=count // 2, sampler=solver, num_inference_steps=steps).run()
        written = len(list(Path(tmp).rglob("*.png"))) - 2  # minus the two class grids
    return {
        "images": count,
        "written": written,
        "peak_rss_MB": peak_rss_mb(),
        "seconds": time.perf_counter() - start,
        "size": size,
        "steps": steps,
        "batch": batch,
    }


def memory(counts: list[int], size: int, steps: int, batch: int, solver: str) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.sampling",
            "--memory-child",
            str(count),
            "--memory-size",
            str(size),
            "--memory-steps",
            str(steps),
            "--memory-batch",
            str(batch),
            "--solver",
            solver,
            "--threads",
            str(torch.get_num_threads()),
        ]
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
    parser.add_argument("--solver-steps", type=int, nargs="+", help="default: the solver's default (20)")
    parser.add_argument("--ckpt", help="trained weights (default: the bundle's models/model.pt if present)")
    parser.add_argument("--quality-images", type=int, default=32, help="0 skips the quality comparison")
    parser.add_argument("--quality-size", type=int, default=64)
    parser.add_argument("--data-images", type=int, default=64, help="real X-rays the Gaussian is fitted to")
    parser.add_argument("--network-images", type=int, default=8, help="images per set on the bundle's network")
    parser.add_argument("--no-fid", action="store_true")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[16, 256])
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="batch 2, 1 timed step, 2 rounds, 8 quality images")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); on a shared, busy machine 1 avoids threads waiting for each other",
    )
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[8, 32], help="batches of the forward table")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(
            json.dumps(
                memory_child(args.memory_child, args.memory_size, args.memory_steps, args.memory_batch, args.solver)
            )
        )
        return 0
    if args.quick:
        args.batch, args.measure_steps, args.repeats = 2, 1, 2
        args.quality_images, args.network_images, args.data_images = min(args.quality_images, 8), 4, 16

    solver_steps = args.solver_steps or [DEFAULT_STEPS[args.solver]]
    info = machine()
    net, weights = bundle_network(args.ckpt)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size_n = 8192 if device == "cuda" else 2048
    peaks = {
        "fp32": max(matmul_peak(torch.float32, size_n, device=device) for _ in range(2)),
        "bf16": max(matmul_peak(torch.bfloat16, size_n, device=device) for _ in range(2)),
    }
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_GiB']} GiB, bf16: {info['cpu_bf16']}, "
        f"GPU: {info['cuda']}, torch {info['torch']}, {info['torch_threads']} torch threads, load average "
        f"{info['load_average_1m']:.1f} (ratios are measured within this run)"
    )
    print(f"weights: {weights}")
    print(
        f"device: {device}; matmul peak ({size_n}^2): fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s\n"
    )

    rows, forward_rows = [], []
    for size in args.sizes:
        rows += speed(
            net, size, args.batch, args.measure_steps, args.repeats, args.solver, solver_steps, peaks, True, device
        )
        forward_rows += forward_speed(net, size, args.forward_batches, max(args.repeats, 3), peaks, device)
    columns = [
        "size",
        "method",
        "steps",
        "compute",
        "batch",
        "s/image",
        "images/s",
        "x vs (a)",
        "x vs (b)",
        "GFLOP/image",
        "GFLOP/s",
        "peak/achieved",
        "timed",
    ]
    print(table(rows, columns))
    print("\nforward pass alone (one sampler step without the scheduler), FLOPs of convolutions and matmuls")
    print(
        table(
            forward_rows,
            [
                "size",
                "compute",
                "batch",
                "ms/image",
                "GFLOP/s",
                "peak/achieved",
                "conv+matmul share",
                "in conv+matmul: peak/achieved",
            ],
        )
    )

    result: dict[str, Any] = {
        "machine": info,
        "device": device,
        "weights": weights,
        "matmul_peak_GFLOPs": peaks,
        "speed": rows,
        "forward": forward_rows,
    }
    if args.quality_images:
        acc = solver_accuracy(
            args.quality_size, args.quality_images, args.data_images, args.solver, solver_steps, not args.no_fid
        )
        net_q = network_quality(
            net, args.quality_size, args.network_images, args.solver, solver_steps[0], not args.no_fid
        )
        result["solver_accuracy"], result["network_quality"] = acc, net_q
        print(
            f"\nsolver accuracy at {acc['size']}px: a Gaussian fitted to {acc['data_images']} real training X-rays "
            f"(exact ODE solution known; no network, no clipping), {acc['images']} seeds; images in [-1, 1]"
        )
        print(table(acc["rows"], list(acc["rows"][0])))
        print(acc["fid_note"])
        print(
            f"\n(b) vs (c) on the bundle's network ({weights}), {net_q['images']} images, seeds "
            f"{net_q['seeds'][0]}..{net_q['seeds'][1]}"
        )
        print(table(net_q["rows"], ["method", "MAD vs (b)", "FID vs (b)"]))
        print(net_q["fid_note"])
    if args.memory_counts:
        m = memory(args.memory_counts, args.memory_size, args.memory_steps, args.memory_batch, args.solver)
        result["memory"] = m
        print(
            f"\npeak RSS while sampling (SampleRunner writes images as they are made; {args.solver}, "
            f"{args.memory_steps} steps, {args.memory_size}px, batch {args.memory_batch})"
        )
        print(table(m, ["images", "written", "peak_rss_MB", "seconds"]))
    quality = equal_seed_fid(weights, Path(args.out) if args.out else None)
    if quality:
        speed_of = {r["method"].strip(): r["x vs (b)"] for r in rows if r["size"] == args.sizes[0]}
        for row in quality["rows"]:
            name = row["method"]
            key = "(b) MONAI DDIM" if name.startswith("(b)") else name.replace("DDIM-50", "DDIM")
            row["x vs (b)"] = speed_of.get(key)
            row["equal quality"] = row.get("equal quality (within 5%)")
        result["fid_at_equal_seeds"] = quality
        print(
            f"\nFID at equal seeds (python -m benchmarks.sampler_quality, same weights): {quality['images']} images "
            f"per set "
            f"against {quality['real']} real X-rays; speed from the table above at {args.sizes[0]} px"
        )
        print(table(quality["rows"], ["method", "FID", "FID / FID(b)", "KID", "x vs (b)", "equal quality"]))
    path = write_json("sampling_quick" if args.quick else "sampling", result, args.out)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
