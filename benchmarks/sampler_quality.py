"""Quality at equal seeds: FID and KID against real X-rays of MONAI DDIM-50 fp32 (b) and medgen's samplers (c).

    python -m benchmarks.sampler_quality                          # 128 images per class, on this machine
    python -m benchmarks.sampler_quality --per-class 500 --device cuda --save-sets DIR --no-fid   # generate on a GPU
    python -m benchmarks.sampler_quality --sets DIR               # FID of sets generated elsewhere

Every set is made from the same seeds and class labels (image i: seed ``--seed + i``, class ``i % 2``), so the sets
differ only by sampler, steps and compute path. Each is compared with the same real images (the bundle's transforms,
``--real-per-class`` per class from the training split) through TF-FID Inception features; KID is reported beside
FID because it is unbiased at these sizes. Speed is compared at equal quality when a set's FID is within 5% of (b)'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler

from benchmarks.common import CLASSES, REPO, bundle_network, machine, table, weights_digest, write_json
from benchmarks.sampling import LabelledNetwork, monai_sample, pipelines

DATA = REPO.parent / "shared" / "data" / "chest_xray_kermany_224"


def sample_sets(
    net: torch.nn.Module,
    per_class: int,
    seed: int,
    steps: list[int],
    solver: str,
    device: str,
    batch: int,
    size: int = 64,
) -> dict[str, dict[str, Any]]:
    """(b) MONAI DDIM-50 fp32, (c) medgen DDIM-50 and ``solver`` at each of ``steps`` on the fast path."""
    count = 2 * per_class
    seeds = list(range(seed, seed + count))
    labels = [i % 2 for i in range(count)]
    fast, plain = pipelines(net, size, batch, device)

    def monai_ddim(lo: int, hi: int) -> torch.Tensor:
        model = LabelledNetwork(plain.network, torch.tensor(labels[lo:hi], device=device))
        return monai_sample(model, plain.initial_noise(seeds[lo:hi]), DDIMScheduler(), 50).clamp(-1, 1)

    runs: dict[str, tuple[str, int, str, Any]] = {
        "(b) MONAI DDIM-50": ("ddim", 50, plain.compute_path, monai_ddim),
        "(c) medgen DDIM-50": (
            "ddim",
            50,
            fast.compute_path,
            lambda lo, hi: fast.generate_batch(labels[lo:hi], seeds[lo:hi], 50, sampler="ddim"),
        ),
    }
    for n in steps:
        runs[f"(c) medgen {solver}-{n}"] = (
            solver,
            n,
            fast.compute_path,
            lambda lo, hi, n=n: fast.generate_batch(labels[lo:hi], seeds[lo:hi], n, sampler=solver),
        )
    sets = {}
    for name, (sampler, n, path, fn) in runs.items():
        start = time.perf_counter()
        images = torch.cat([fn(lo, min(lo + batch, count)).float().cpu() for lo in range(0, count, batch)])
        seconds = time.perf_counter() - start
        sets[name] = {
            "sampler": sampler,
            "steps": n,
            "compute": path,
            "images": to_uint8(images),
            "labels": np.asarray(labels),
            "seconds": seconds,
        }
        print(f"{name}: {count} images in {seconds:.1f} s on {path}", flush=True)
    return sets


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> uint8 (N, H, W): how the pipeline writes PNGs."""
    return ((images[:, 0] + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def save_sets(sets: dict[str, dict[str, Any]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, s) in enumerate(sets.items()):
        np.savez_compressed(
            folder / f"set{i}.npz",
            name=name,
            **{k: v for k, v in s.items() if k != "images"},
            images=s["images"],
        )


def load_sets(folder: Path) -> dict[str, dict[str, Any]]:
    sets = {}
    for path in sorted(folder.glob("set*.npz"), key=lambda p: int(p.stem[3:])):
        with np.load(path) as z:
            sets[str(z["name"])] = {
                "sampler": str(z["sampler"]),
                "steps": int(z["steps"]),
                "compute": str(z["compute"]),
                "images": z["images"],
                "labels": z["labels"],
                "seconds": float(z["seconds"]),
            }
    return sets


def real_images(per_class: int, size: int = 64) -> np.ndarray:
    """Training X-rays through the bundle's transforms, uint8 like the generated sets."""
    from medgen.data.transforms import diffusion_transforms

    transform = diffusion_transforms(size)
    out = []
    for name in CLASSES:
        paths = sorted((DATA / "train" / name).glob("*.jpeg"))
        if len(paths) < per_class:
            raise SystemExit(f"{DATA / 'train' / name}: {len(paths)} images, {per_class} needed")
        step = len(paths) / per_class  # spread over the folder, not the first patients only
        for i in range(per_class):
            out.append(torch.as_tensor(transform({"image": str(paths[int(i * step)])})["image"]))
    return to_uint8(torch.stack(out))


def cached_features(images: np.ndarray, features: Any) -> np.ndarray:
    """Features of the real images, kept in medgen's feature cache (keyed by the pixels) across runs."""
    import hashlib

    from medgen.metrics.features import cache_dir

    path = cache_dir() / "features" / f"benchmark_real_{hashlib.sha1(images.tobytes()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    feats = features(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def score(sets: dict[str, dict[str, Any]], real: np.ndarray) -> list[dict[str, Any]]:
    from medgen.metrics.distribution import fid, kid
    from medgen.metrics.features import InceptionFeatures

    extractor = InceptionFeatures()

    def features(images: np.ndarray) -> np.ndarray:
        return extractor(images[:, None].astype(np.float32) / 255.0)

    ref = cached_features(real, features)
    rows = []
    for name, s in sets.items():
        feats = features(s["images"])
        k = kid(ref, feats, subsets=50, subset_size=min(len(feats), len(ref)) // 2)
        rows.append(
            {
                "method": name,
                "steps": s["steps"],
                "compute": s["compute"],
                "images": len(s["images"]),
                "FID": fid(ref, feats),
                "KID": k["mean"],
                "KID std": k["std"],
                "generation s": s["seconds"],
            }
        )
    b = rows[0]["FID"]
    for row in rows:
        row["FID / FID(b)"] = row["FID"] / b
        row["equal quality (within 5%)"] = "yes" if row["FID"] <= 1.05 * b else "no"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=128, help="generated images per class and set")
    parser.add_argument("--real-per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--solver", default="dpmpp2m")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20, 25])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ckpt", help="weights (default: the bundle's models/model.pt)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--save-sets", help="write the generated sets (uint8 npz) to this folder")
    parser.add_argument("--sets", help="score sets written by --save-sets instead of generating")
    parser.add_argument("--no-fid", action="store_true", help="generate only")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    if args.sets:
        sets, weights = load_sets(Path(args.sets)), f"sets from {args.sets}"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        net, weights = bundle_network(args.ckpt)
        sets = sample_sets(net, args.per_class, args.seed, args.steps, args.solver, device, args.batch)
        if args.save_sets:
            save_sets(sets, Path(args.save_sets))
    result: dict[str, Any] = {
        "machine": info,
        "weights": weights,
        "weights_sha256": weights_digest(weights) if not args.sets else None,
        "sets": {k: {kk: vv for kk, vv in v.items() if kk not in ("images", "labels")} for k, v in sets.items()},
    }
    if not args.no_fid:
        rows = score(sets, real_images(args.real_per_class))
        result["rows"], result["real_per_class"] = rows, args.real_per_class
        print(f"\nFID / KID against {2 * args.real_per_class} real training X-rays (TF-FID Inception), same seeds")
        print(
            table(
                rows,
                [
                    "method",
                    "steps",
                    "compute",
                    "images",
                    "FID",
                    "FID / FID(b)",
                    "KID",
                    "KID std",
                    "equal quality (within 5%)",
                ],
            )
        )
    path = write_json("sampler_quality", result, args.out)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
