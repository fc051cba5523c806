"""Shared pieces of the benchmarks: the bundle's network, machine facts, matmul peak, FLOP counts, tables, JSON."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from medgen.diffusion.precision import cpu_supports_bf16
from medgen.fileio import write_json_atomic
from medgen.networks import ConditionalDiffusionUNet

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "cxr_ddpm"
RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ["NORMAL", "PNEUMONIA"]  # the cxr_ddpm bundle's classes, in label order


def bundle_settings() -> dict[str, Any]:
    return yaml.safe_load((BUNDLE / "configs" / "train.yaml").read_text())


def bundle_network(ckpt: str | Path | None = None) -> tuple[ConditionalDiffusionUNet, str]:
    """The bundle's ``network_def`` (from train.yaml) and where its weights came from."""
    cfg = bundle_settings()
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(
        in_channels=cfg["channels"],
        out_channels=cfg["channels"],
        num_classes=len(cfg["classes"]),
        channels=cfg["unet_channels"],
        attention_levels=cfg["attention_levels"],
        num_res_blocks=cfg["num_res_blocks"],
        num_head_channels=32,
    )
    ckpt = Path(ckpt) if ckpt else BUNDLE / "models" / "model.pt"
    if ckpt.is_file():
        from medgen.diffusion.sample_run import load_weights

        load_weights(net, ckpt)
        return net.float().eval(), str(ckpt)
    # MONAI zero-initialises the output convolution, so an untrained network predicts exactly 0 and every sampler
    # returns a function of the noise alone; give it PyTorch's default init so samplers differ as they would
    for module in net.out.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    return net.eval(), "random init, output layer re-initialised (no trained weights found)"


def weights_digest(path: str | Path) -> str | None:
    """sha256 of a weights file (ties results of different benchmarks to the same network), or None."""
    import hashlib

    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What ran the benchmark, including the load (other jobs on the machine make every figure slower)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "memory_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1m": os.getloadavg()[0],
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def synchronize() -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each function, ``repeats`` rounds in turn (a b c a b c ...), so a busy machine slows all alike."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def best(times: Sequence[float]) -> float:
    """The median of the fastest half: robust to rounds where another process took the cores."""
    fastest = sorted(times)[: max(1, (len(times) + 1) // 2)]
    return statistics.median(fastest)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul in ``dtype`` (the machine's practical peak for that dtype)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    seconds = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / seconds / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def forward_flops(net: torch.nn.Module, image_size: int, channels: int = 1) -> int:
    """FLOPs of one image's forward pass (convolutions, matmuls, attention); timestep 1 (a positive noise level for a
    score network, whose sigma must be > 0)."""
    x = torch.zeros(1, channels, image_size, image_size)
    with torch.inference_mode():
        return count_flops(lambda: net(x, torch.ones(1, dtype=torch.long), class_labels=torch.zeros(1).long()))


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([line, rule, *body])


def write_json(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """``payload`` as ``<name>.json`` in ``out_dir`` (default benchmarks/results), replacing any earlier file whole."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(payload, out / f"{name}.json")
