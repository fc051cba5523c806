"""Where do the metrics put the baselines? Real + Gaussian noise (sigma 0.3), augmented real, and the real-vs-real
floor, each scored against real training images of the Kermany chest X-ray set (64 x 64 by default).

    python -m benchmarks.evaluation [--per-class 200] [--size 64] [--features inception,domain] [--out PATH]

Prints a table and writes JSON. Not part of the test run's pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from medgen.metrics.baselines import augmentation_baseline, noise_baseline
from medgen.metrics.evaluate import score_sets
from medgen.metrics.features import DomainFeatures, InceptionFeatures
from medgen.metrics.image_sets import ImageSet, datalist_from_class_folders, load_datalist_split

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data"))


def _row(name: str, group: str, ex: str, m: dict) -> dict:
    f = m.get(ex, {})
    pr, kid = f.get("prdc", {}), f.get("kid", {})
    ms = m.get("ms_ssim_generated", {})
    return {
        "set": name,
        "group": group,
        "features": ex,
        "n_real": m["n_real"],
        "n_set": m["n_generated"],
        "fid": f.get("fid", {}).get("value"),
        "kid": kid.get("mean"),
        "kid_std": kid.get("std"),
        **{k: pr.get(k) for k in ("precision", "recall", "density", "coverage")},
        "ms_ssim": ms.get("mean"),
    }


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def gate_and_audit(reference: ImageSet, sets: dict[str, ImageSet], extractors: dict) -> dict:
    """Quality-gate rejection rate (gate fitted leave-one-out on the reference, 95th percentile) and memorisation-audit
    flags (reference = training, the real test set = held-out reference distances) for each set."""
    from medgen.metrics.features import extract_features
    from medgen.metrics.memorisation import memorisation_audit
    from medgen.metrics.quality_gate import QualityGate

    name = "domain" if "domain" in extractors else next(iter(extractors))
    ref_feats = extract_features(extractors[name], reference)
    gate = QualityGate(k=5, percentile=95).fit(ref_feats)
    held = sets["floor: real test"]
    held_feats = extract_features(extractors[name], held)
    out = {}
    for set_name, s in sets.items():
        feats = extract_features(extractors[name], s)
        audit = memorisation_audit(s.images, reference.images, held.images, feats, ref_feats, held_feats)
        out[set_name] = {
            "gate_features": name,
            "gate_rejection": float(1 - gate.passes(feats).mean()),
            "audit_flagged": int(audit.flagged.sum()),
            "n": len(s),
        }
    return out


def run_utility(dl: dict, root: Path, args: argparse.Namespace) -> dict:
    """Utility on the full Kermany training set (64 x 64). The 'synthetic' set here is a stand-in (noise-sigma-0.3
    copies of ``per_class`` training images) that exercises the experiment and times it; use a model's samples via
    ``medgen evaluate --utility-sizes`` for the real question."""
    from medgen.metrics.utility import utility_experiment

    t0 = time.time()
    full = datalist_from_class_folders({"training": root / "train", "test": root / "test"})
    train = load_datalist_split(full, "training", size=args.size)
    test = load_datalist_split(full, "test", size=args.size)
    stand_in = load_datalist_split(dl, "training", size=args.size)
    synthetic = ImageSet(noise_baseline(stand_in, 0.3, seed=1), stand_in.labels, stand_in.classes)
    sizes = [None if s.strip() == "all" else int(s) for s in args.utility_sizes.split(",")]
    out = utility_experiment(train, synthetic, test, sizes, epochs=args.utility_epochs, log=True)
    for r in out["rows"]:
        aucs = " ".join(f"{c} {a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]" for c, a in r["auc"].items())
        print(
            f"utility real/class={r['real_per_class']} {r['arm']}: acc {r['accuracy']:.3f} AUC {aucs} ({r['seconds']}s)"
        )
    for t in out["mcnemar"]:
        print(f"McNemar real/class={t['real_per_class']}: p = {t['p_value']:.3g}")
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=200, help="real images per class in each split")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", default="inception,domain")
    p.add_argument("--domain-train-per-class", type=int, default=1000)
    p.add_argument("--domain-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--utility-sizes", default="", help="e.g. 50,200,all: run the utility experiment (slow)")
    p.add_argument("--utility-epochs", type=int, default=4)
    p.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "evaluation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    root = data_root() / "chest_xray_kermany_224"
    dl = datalist_from_class_folders({"training": root / "train", "test": root / "test"}, per_class=args.per_class)
    reference = load_datalist_split(dl, "training", size=args.size)
    heldout = load_datalist_split(dl, "test", size=args.size)
    timings = {"load": round(time.time() - t_start, 1)}
    extractors: dict = {}
    names = [n.strip() for n in args.features.split(",") if n.strip()]
    if "inception" in names:
        extractors["inception"] = InceptionFeatures()
    if "domain" in names:
        from medgen.metrics.domain_model import ensure_domain_classifier

        t0 = time.time()
        full = datalist_from_class_folders({"training": root / "train", "test": root / "test"})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "kermany.json"
            path.write_text(json.dumps(full))
            weights = ensure_domain_classifier(
                path, size=args.size, epochs=args.domain_epochs, max_per_class=args.domain_train_per_class, log=True
            )
        extractors["domain"] = DomainFeatures(weights)
        timings["domain_classifier"] = round(time.time() - t0, 1)
    sets = {
        "floor: real test": heldout,
        "noise sigma=0.3": ImageSet(noise_baseline(heldout, 0.3), heldout.labels, heldout.classes),
        "augmentation": ImageSet(augmentation_baseline(heldout), heldout.labels, heldout.classes),
    }
    results, rows = {}, []
    for name, s in sets.items():
        t0 = time.time()
        results[name] = score_sets(reference, s, extractors, kid_subsets=100)
        timings[name] = round(time.time() - t0, 1)
        for group, m in results[name].items():
            rows += [_row(name, group, ex, m) for ex in extractors]
    extra = gate_and_audit(reference, sets, extractors)
    cols = [
        "set",
        "group",
        "features",
        "n_real",
        "n_set",
        "fid",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "density",
        "coverage",
        "ms_ssim",
    ]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(_fmt(r[c]) for c in cols))
    for name, e in extra.items():
        print(
            f"{name}: quality-gate rejection {e['gate_rejection']:.1%} ({e['gate_features']}); "
            f"memorisation audit flags {e['audit_flagged']} of {e['n']}"
        )
    ms_real = {c: results["floor: real test"][c]["ms_ssim_real"].get("mean") for c in reference.classes}
    print(f"MS-SSIM of the real training images per class: {ms_real}")
    utility = None
    if args.utility_sizes:
        utility = run_utility(dl, root, args)
        timings["utility"] = utility.pop("seconds")
    timings["total"] = round(time.time() - t_start, 1)
    print(f"timings (s): {timings}")
    out = {
        "per_class": args.per_class,
        "size": args.size,
        "extractors": {k: e.name for k, e in extractors.items()},
        "rows": rows,
        "ms_ssim_real_reference": ms_real,
        "timings_s": timings,
        "threads": args.threads,
        "full": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
