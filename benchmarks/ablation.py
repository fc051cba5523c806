"""Training-recipe ablation at equal training compute, scored by the quality protocol.

    python -m benchmarks.ablation --budget-gflop 200000 --image-size 32 --per-class 100 --out-dir /tmp/ablation
    python -m benchmarks.ablation --variants base v_pred min_snr --budget-gflop 20000   # a few, briefly
    python -m benchmarks.ablation --bundle brain_mri_score --variants uniform lognormal --out-dir /tmp/ablation_brain

Every variant trains the bundle (``cxr_ddpm`` by default, or the score-based ``brain_mri_score``) from scratch on the
same ``--max-items-per-class`` images per class of the bundle's data (``python -m monai.bundle run training``, the
user's command) for the same number of training FLOPs: iterations = budget / (3 x forward FLOPs of its network per
image x batch), so a wider network or a bigger batch gets fewer iterations and a machine's load changes the
wall-clock but not the comparison. Each run's EMA weights are then scored by ``benchmarks.quality`` (FID / floor per
class, KID) at ``--per-class`` images per class. A killed ablation resumes: finished variants are read back, a
half-trained one continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, machine, table, write_json


@dataclass(frozen=True)
class Study:
    """What one bundle's ablation varies, what every variant shares, and how its samples are scored."""

    #: the recipe every variant starts from, spelled out so the table means the same whatever train.yaml's
    #: defaults become
    base: dict[str, Any]
    #: name -> overrides of ``base`` and the bundle's other keys
    variants: dict[str, dict[str, Any]]
    sampler: str
    steps: int
    #: keys every variant trains with at a given image size (the network the bundle ships, noise scale by size)
    fixed: Callable[[int], dict[str, Any]] = field(default=lambda size: {})


STUDIES: dict[str, Study] = {
    # MONAI's plain epsilon objective (uniform timesteps, no loss weighting, no preconditioning), constant lr
    "cxr_ddpm": Study(
        base={"prediction_type": "epsilon", "loss_weighting": "none", "timestep_sampling": "uniform",
              "preconditioning": "none", "lr_schedule": "constant", "lr_warmup_iters": 0},
        variants={
            "base": {},
            "v_pred": {"prediction_type": "v_prediction"},
            "min_snr": {"loss_weighting": "min_snr"},
            "v_pred+min_snr": {"prediction_type": "v_prediction", "loss_weighting": "min_snr"},
            "lognormal_t": {"timestep_sampling": "lognormal"},
            "edm": {"preconditioning": "edm", "timestep_sampling": "lognormal"},
            "lr_warmup_cosine": {"lr_schedule": "cosine", "lr_warmup_iters": 200},
            "ema_0.99": {"ema_decay": 0.99, "ema_warmup_iters": 100},
            "ema_0.9995": {"ema_decay": 0.9995},
            "edm+ema_0.99": {"preconditioning": "edm", "timestep_sampling": "lognormal", "ema_decay": 0.99,
                             "ema_warmup_iters": 100},
            "narrow_16": {"unet_channels": [16, 32, 64, 64]},
            "wide_48": {"unet_channels": [48, 96, 192, 192]},
            "batch_8": {"batch_size": 8},
            "batch_32": {"batch_size": 32},
        },
        sampler="dpmpp2m", steps=15),
    # NCSN's denoising score matching with its noise levels drawn log-uniformly, constant lr, on the shipped network;
    # sigma_max ~ 1.15 x image size (the largest distance between training images, NCSNv2's first rule)
    "brain_mri_score": Study(
        base={"timestep_sampling": "uniform", "lr_schedule": "constant", "lr_warmup_iters": 0},
        variants={
            "uniform": {},
            "lognormal": {"timestep_sampling": "lognormal"},
            "lognormal+cosine": {"timestep_sampling": "lognormal", "lr_schedule": "cosine", "lr_warmup_iters": 200},
            "uniform+cosine": {"lr_schedule": "cosine", "lr_warmup_iters": 200},
        },
        sampler="dpmpp2m", steps=20,
        fixed=lambda size: {"unet_channels": [16, 32, 64, 64], "norm_num_groups": 8,
                            "sigma_max": round(1.15 * size, 1)}),
}


def train_config(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs" / "train.yaml"


def bundle_defaults(bundle: str = "cxr_ddpm") -> dict[str, Any]:
    import yaml

    return yaml.safe_load(train_config(bundle).read_text())


def train_flops_per_image(overrides: dict[str, Any], image_size: int, bundle: str = "cxr_ddpm") -> int:
    """3 x the forward FLOPs of the variant's network on one image (forward + backward), the network built by the
    bundle's own ``network_def``."""
    import torch
    from monai.bundle import ConfigParser

    from benchmarks.common import forward_flops

    parser = ConfigParser()
    parser.read_config(str(train_config(bundle)))
    parser.update({**overrides, "image_size": image_size})
    net = parser.get_parsed_content("network_def", instantiate=True)
    with torch.no_grad():
        return 3 * forward_flops(net, image_size, parser.get_parsed_content("channels"))


def cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.ablation: error: {' '.join(cmd[:6])} ... failed (exit {proc.returncode}); "
                         f"see {log}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", choices=list(STUDIES), default="cxr_ddpm", help="the bundle whose recipe is varied")
    ap.add_argument("--variants", nargs="+",
                    help="; ".join(f"{b}: any of {list(st.variants)}" for b, st in STUDIES.items()))
    ap.add_argument("--budget-gflop", type=float, default=200_000, help="training compute of every variant")
    ap.add_argument("--image-size", type=int, default=32, help="training size (32: 4x cheaper than the bundle's 64)")
    ap.add_argument("--per-class", type=int, default=100, help="generated images per class for the protocol")
    ap.add_argument("--dataset-dir", help="the real data (default: the bundle's, under MEDGEN_DATA_DIR)")
    ap.add_argument("--out-dir", required=True, help="run folders, samples and logs (keep it outside the checkout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-items-per-class", type=int, default=600,
                    help="training images per class (the same for every variant; 0 = all)")
    ap.add_argument("--json", help="results file (default: benchmarks/results/ablation.json for cxr_ddpm, "
                                   "ablation_<bundle>.json for the others)")
    args = ap.parse_args(argv)
    study = STUDIES[args.bundle]
    args.variants = args.variants or list(study.variants)
    unknown = [v for v in args.variants if v not in study.variants]
    if unknown:
        raise SystemExit(f"benchmarks.ablation: error: unknown {args.bundle} variant(s) {unknown}; "
                         f"choose from {list(study.variants)}")
    from benchmarks.quality import data_root

    os.environ.setdefault("MEDGEN_DATA_DIR", data_root())
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = bundle_defaults(args.bundle)
    train = train_config(args.bundle)
    default_json = "ablation.json" if args.bundle == "cxr_ddpm" else f"ablation_{args.bundle}.json"
    json_path = Path(args.json) if args.json else RESULTS / default_json
    rows, results = [], {}
    for name in args.variants:
        overrides = {**study.fixed(args.image_size), **study.base, **study.variants[name]}
        batch = overrides.get("batch_size", base["batch_size"])
        per_image = train_flops_per_image(overrides, args.image_size, args.bundle)
        iterations = max(1, round(args.budget_gflop * 1e9 / (per_image * batch)))
        folder = out / name
        done = folder / "ablation.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(train),
                   "--output_dir", str(folder / "run"), "--image_size", str(args.image_size),
                   "--max_iterations", str(iterations), "--max_epochs", "100000", "--seed", str(args.seed),
                   "--checkpoint_interval", "5", "--sample_interval", "100000"]
            if args.dataset_dir:
                cmd += ["--dataset_dir", args.dataset_dir]
            if args.max_items_per_class:
                cmd += ["--max_items_per_class", str(args.max_items_per_class)]
            if overrides.get("lr_schedule") == "cosine":
                cmd += ["--lr_total_iters", str(iterations)]
            for key, value in overrides.items():
                cmd += [f"--{key}", cli_value(value)]
            print(f"[{name}] training {iterations} iterations x batch {batch} "
                  f"({per_image / 1e9:.2f} GFLOP per image, {args.budget_gflop:g} GFLOP)", flush=True)
            train_s = run(cmd, folder / "train.log")
            qjson = folder / "quality.json"
            qcmd = [sys.executable, "-m", "benchmarks.quality", "--bundle", args.bundle, "--weights",
                    str(folder / "run" / "model.pt"), "--per-class", str(args.per_class), "--samples-root",
                    str(folder / "samples"), "--json", str(qjson), "--sampler", study.sampler,
                    "--steps", str(study.steps)]
            if args.dataset_dir:
                qcmd += ["--dataset-dir", args.dataset_dir]
            print(f"[{name}] scoring", flush=True)
            run(qcmd, folder / "quality.log")
            quality = json.loads(qjson.read_text())
            # one line per finished epoch: a budget shorter than an epoch leaves none
            loss_file = folder / "run" / "loss.jsonl"
            lines = loss_file.read_text().splitlines() if loss_file.is_file() else []
            losses = [json.loads(x) for x in lines if x.strip()]
            results[name] = {"overrides": study.variants[name], "recipe": overrides, "iterations": iterations,
                             "batch_size": batch,
                             "train_gflop_per_image": per_image / 1e9, "images_seen": iterations * batch,
                             "train_seconds": round(train_s, 1), "final_loss": losses[-1]["loss"] if losses else None,
                             "weights_sha256": quality["weights_sha256"], "classes": quality["classes"],
                             "overall": quality["overall"], "samples_dir": quality["samples_dir"]}
            done.write_text(json.dumps(results[name], indent=1))
        r = results[name]
        rows.append({"variant": name, "iterations": r["iterations"], "images": r["images_seen"],
                     "train s": r["train_seconds"],
                     **{f"{c} FID/floor": e["fid_ratio"] for c, e in r["classes"].items()},
                     "overall FID/floor": r["overall"]["fid_ratio"], "KID": r["overall"]["generated"].get("kid")})
        print(table(rows, list(rows[0])), flush=True)
        # written after every variant: an interrupted ablation leaves its finished rows
        payload = {"bundle": args.bundle, "budget_gflop": args.budget_gflop, "image_size": args.image_size,
                   "per_class": args.per_class, "max_items_per_class": args.max_items_per_class,
                   "machine": machine(), "variants": results,
                   "best": min(results, key=lambda n: results[n]["overall"]["fid_ratio"] or float("inf"))}
        path = write_json(json_path.stem, payload, json_path.parent)
    print(f"\nbest: {payload['best']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
