"""Downstream utility of a bundle's own samples: does adding them help a classifier trained on few real images?

    python -m benchmarks.utility --bundle cxr_ddpm
    python -m benchmarks.utility --bundle brain_mri_score --weights runs/brain/model.pt
    python -m benchmarks.utility --bundle cxr_ddpm --synthetic-dir runs/samples   # a `medgen sample` folder

1. Synthetic images: ``--synthetic-per-class`` per class from the bundle's weights through the bundle's own
   inference config (medgen's DiffusionPipeline and SampleRunner; DPM-Solver++ 2M at the bundle's steps for DDPM
   bundles, the bundle's own sampler for score bundles; the bundle's guide network where it autoguides, or
   ``--guide PATH|none``; image k of the job gets seed ``--sample-seed + k``), written to ``--synthetic-dir``; a rerun
   (or a folder `medgen sample` made) reuses the images already there. What made the images used (sampler, steps,
   guidance, guide) is read from their ``samples.jsonl`` records: a folder of mixed settings, or of other settings
   than the options given, stops with one line.
2. Real images: the data set's own training and test folders, read as training reads them.
3. Classifiers (:mod:`medgen.metrics.classifier`): real only vs real + synthetic at each ``--sizes`` real images per
   class, one per ``--seeds`` (each seed draws its own real subset), all with ``--steps`` optimizer steps; one on
   synthetic images alone; and that one fine-tuned on each real subset, and on each real + synthetic set
   (``--steps`` more steps peaking at ``--fine-tune-lr``: pre-training on synthetic images, the other way to use
   them). All tested on the real test split, at the weights' image size or ``--image-size`` (64 compares a 256x256
   model's samples with the same real images as the 64x64 models').
4. Per size: AUC per class with bootstrap 95% CI, the AUC gain of each arm over real only and its CI, F1, confusion
   matrices, McNemar (Bonferroni across sizes and arms). Prints a table; writes ``utility_<bundle>.json`` (weights
   sha256, sampler, steps, guidance, the guide's sha256, seeds, machine), ``.png`` (AUC vs real images per class) and
   ``.html`` into ``--out`` (named ``--name``), and two copies of the JSON in the synthetic folder:
   ``utility-<settings>.json``, named by a digest of what decides the result (weights, sizes, seeds, steps, ...), so
   runs with other settings on the same images keep their own file, and ``utility.json``, the latest run, which
   ``medgen evaluate`` shows in its report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, RESULTS, machine, weights_digest, write_json
from medgen.fileio import atomic_write
from medgen.metrics.utility import FINE_TUNE_LR

#: each bundle's data set: folder under the data root, its training and test split folders
DATASETS = {
    "cxr_ddpm": ("chest_xray_kermany_224", "train", "test"),
    "cxr_ldm": ("chest_xray_kermany_224", "train", "test"),
    "brain_mri_score": ("brain_tumor_mri_224", "Training", "Testing"),
    "brain_mri_ldm": ("brain_tumor_mri_224", "Training", "Testing"),
}
#: target of the experiment: AUC gain of the minority class at these real sizes per class
TARGET_GAIN, TARGET_SIZES = 0.05, (25, 50)


class UtilityError(Exception):
    """Bad input to the benchmark; printed as one line."""


def data_root() -> Path:
    return Path(os.environ.get("MEDGEN_TEST_DATA") or REPO.parent / "shared" / "data")


def bundle_weights(bundle: str, weights: str | None) -> tuple[Path, Path]:
    """(bundle folder, weights file), or a one-line error naming the missing file."""
    from medgen.bundles import find_bundle

    folder = find_bundle(bundle)
    path = Path(weights) if weights else folder / "models" / "model.pt"
    if not path.is_file():
        shown = path.relative_to(REPO) if path.is_absolute() and path.is_relative_to(REPO) else path
        hint = "" if weights else f"; the bundle ships none: train it (medgen train {bundle}) or pass --weights PATH"
        raise UtilityError(f"no weights at {shown}{hint}")
    return folder, path.resolve()


def sampling_settings(folder: Path, sampler: str | None, steps: int | None, guidance: float | None,
                      interval: list[str] | None = None) -> dict:
    """DPM-Solver++ 2M at the bundle's steps (its DEFAULT_STEPS when the bundle samples otherwise) for DDPM bundles;
    a score bundle's own sampler and steps; the bundle's guidance scale and guidance interval (``interval`` as
    ``--guidance-interval`` takes it: LOW HIGH, or none)."""
    from medgen.bundles import read_config
    from medgen.cli import guidance_interval_arg
    from medgen.diffusion.solvers import DEFAULT_STEPS

    cfg = read_config(folder, "inference")
    own, own_steps = cfg.get("sampler", "ddim"), int(cfg.get("num_inference_steps", 50))
    chosen = sampler or ("dpmpp2m" if own in DEFAULT_STEPS else own)
    if steps is None:
        steps = own_steps if chosen == own else DEFAULT_STEPS.get(chosen, own_steps)
    given = guidance_interval_arg(interval)
    return {"sampler": chosen, "steps": int(steps),
            "guidance_scale": float(guidance if guidance is not None else cfg.get("guidance_scale", 1.0)),
            "guidance_interval": cfg.get("guidance_interval") if given == "bundle" else given}


def guide_option(folder: Path, guide: str | None) -> str | None:
    """``--guide`` as the inference config's ``guide_path`` (None: leave the bundle's default); a one-line error for
    a missing file or a bundle without autoguidance."""
    from medgen.bundles import read_config

    if guide is None:
        return None
    if "guide_path" not in read_config(folder, "inference"):
        if guide == "none":
            return None
        raise UtilityError(f"--guide {guide}: bundle {folder.name} samples without a guide network")
    if guide != "none" and not Path(guide).is_file():
        raise UtilityError(f"--guide {guide}: no such file")
    return guide if guide == "none" else str(Path(guide).resolve())


def _records(folder: Path) -> list[dict]:
    """The folder's sample records whose image exists, one per image."""
    from medgen.diffusion.sample_run import sample_records

    return [r for r in sample_records(folder) if (folder / r["file"]).is_file()]


def _chosen(records: list[dict], classes: list[str], per_class: int, sha: str) -> dict[str, list[dict]]:
    """The first ``per_class`` images of each class by seed; images of other weights are refused."""
    other = {r.get("checkpoint_sha256") for r in records} - {None, sha}
    if other:
        raise UtilityError(f"the synthetic folder holds samples of other weights (sha256 {sorted(other)[0][:12]}..., "
                           f"these are {sha[:12]}...): give another --synthetic-dir or the --weights that made them")
    by_class: dict[str, list[dict]] = {c: [] for c in classes}
    for r in sorted(records, key=lambda r: int(r["seed"])):
        if r.get("class") in by_class and len(by_class[r["class"]]) < per_class:
            by_class[r["class"]].append(r)
    return by_class


#: what made a synthetic image, as its samples.jsonl record names it (guide_sha256: None without a guide network;
#: guidance_interval: None, absent from the record, when guided at every step)
SETTING_KEYS = ("sampler", "steps", "guidance_scale", "guide_sha256", "guidance_interval")


def used_settings(used: list[dict], out: Path, asked: dict) -> dict:
    """The one sampling setting the ``used`` images were made with, from their records; a one-line error when they
    were made with several, or with other settings than ``asked`` (the options given on the command line)."""
    made = {tuple(_hashable(r.get(k)) for k in SETTING_KEYS) for r in used}
    if len(made) > 1:
        shown = "; ".join(", ".join(f"{k} {v}" for k, v in zip(SETTING_KEYS, m)) for m in sorted(made, key=str))
        raise UtilityError(f"{out}: its images were made with {len(made)} sampling settings ({shown}); a result "
                           "must describe one: give a folder of one setting (--synthetic-dir)")
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in zip(SETTING_KEYS, made.pop())}
    settings["guide"] = next((r.get("guide") for r in used if r.get("guide")), None)
    options = {"sampler": "--sampler", "steps": "--sampling-steps", "guidance_scale": "--guidance",
               "guide_sha256": "--guide", "guidance_interval": "--guidance-interval"}
    wrong = [f"{options[key]} {_brief(value)} asked, {_brief(settings[key])} there" for key, value in asked.items()
             if value != settings[key]]
    if wrong:
        raise UtilityError(f"{out} holds images made otherwise ({'; '.join(wrong)}): give another --synthetic-dir "
                           "or leave those options out to use its images as they are")
    return settings


def _hashable(value: Any) -> Any:
    """A record's value as a set holds it: a guidance interval's list as a tuple of floats."""
    return tuple(float(v) for v in value) if isinstance(value, list) else value


def _brief(value: Any) -> str:
    """A setting as an error shows it: a guide's sha256 cut to 12 characters, no guide as none."""
    if value is None:
        return "none"
    return f"guide {value[:12]}..." if isinstance(value, str) and len(value) == 64 else str(value)


def synthetic_set(folder: Path, weights: Path, out: Path, classes: list[str], per_class: int, seed: int,
                  settings: dict, size: int, batch_size: int, asked: dict | None = None) -> tuple[Any, dict]:
    """Sample (or reuse) ``per_class`` images per class into ``out``; returns the ImageSet and what made it (the
    images' own records: :func:`used_settings`)."""
    from medgen.bundles import run_bundle
    from medgen.metrics.image_sets import ImageSet, load_image

    sha = weights_digest(weights) or ""
    chosen = _chosen(_records(out), classes, per_class, sha)
    start, made = time.time(), 0
    if any(len(v) < per_class for v in chosen.values()):
        before = sum(len(v) for v in chosen.values())
        print(f"sampling {per_class} per class ({settings['sampler']}, {settings['steps']} steps, guidance "
              f"{settings['guidance_scale']}) into {out}", flush=True)
        try:
            run_bundle(folder, "inference", "inference", {
                "ckpt_path": str(weights), "output_dir": str(out.resolve()), "per_class": per_class, "seed": seed,
                "sampler": settings["sampler"], "num_inference_steps": settings["steps"],
                "guidance_scale": settings["guidance_scale"], "batch_size": batch_size,
                **({"guidance_interval": asked["guidance_interval"]} if "guidance_interval" in (asked or {}) else {}),
                **({"guide_path": settings["guide_path"]} if settings.get("guide_path") else {}),
            })
        except RuntimeError as err:  # MONAI's "Failed to evaluate" around the sampler's own one-line refusal
            from medgen.cli import root_cause

            cause = root_cause(err)
            if isinstance(cause, ValueError):
                raise UtilityError(str(cause)) from err
            raise
        chosen = _chosen(_records(out), classes, per_class, sha)
        made = sum(len(v) for v in chosen.values()) - before
    short = {c: len(v) for c, v in chosen.items() if len(v) < per_class}
    if short:
        raise UtilityError(f"{out} has too few synthetic images for {short} (need {per_class} per class)")
    used = [r for c in classes for r in chosen[c]]
    made_with = used_settings(used, out, asked or {})
    images = [load_image(out / r["file"], size) for r in used]
    synthetic = ImageSet(
        torch.stack([torch.from_numpy(x) for x in images]).numpy(), [classes.index(r["class"]) for r in used],
        classes, [r["file"] for r in used])
    info = {
        "folder": str(out),
        "per_class": per_class,
        "seeds": {c: [int(r["seed"]) for r in chosen[c]] for c in classes},
        "sampler": sorted({str(r.get("sampler")) for r in used}),
        "steps": sorted({int(r["steps"]) for r in used if r.get("steps") is not None}),
        "guidance_scale": sorted({float(r["guidance_scale"]) for r in used if r.get("guidance_scale") is not None}),
        "guide": made_with["guide"],
        "guide_sha256": made_with["guide_sha256"],
        "made_with": made_with,
        "generated_now": made,
        "sampling_seconds": round(time.time() - start, 1) if made else 0.0,
    }
    return synthetic, info


def real_sets(bundle: str, classes: list[str], size: int, prep: dict, data: Path | None,
              train_per_class: int | None, test_per_class: int | None,
              class_map: dict | None = None) -> tuple[Any, Any, dict]:
    """The data set's training and test folders as training reads them (optionally at most N per class), their
    folders merged into the weights' classes by the ``class_map`` the weights were trained with."""
    from medgen.data.class_map import merge_classes
    from medgen.metrics.image_sets import datalist_from_class_folders, load_datalist_split

    if bundle not in DATASETS and data is None:
        raise UtilityError(f"no data set known for bundle {bundle!r}: pass --data FOLDER with train/ and test/")
    name, train, test = DATASETS.get(bundle, ("", "train", "test"))
    root = data or data_root() / name
    for split in (train, test):
        if not (root / split).is_dir():
            raise UtilityError(f"real data not found: {root / split} (set MEDGEN_TEST_DATA or pass --data)")
    sets = []
    for key, split, limit in (("training", train, train_per_class), ("test", test, test_per_class)):
        dl = merge_classes(datalist_from_class_folders({key: root / split}, per_class=limit, seed=0), class_map,
                           max_items_per_class=limit)
        if dl["classes"] != classes:
            raise UtilityError(f"{root / split} has classes {dl['classes']}, the weights {classes}")
        sets.append(load_datalist_split(dl, key, size=size, **prep))
    return sets[0], sets[1], {"root": str(root), "train": train, "test": test}


def settings_digest(result: dict) -> str:
    """12 hex digits naming what decides a utility result: the same images, classifiers and test set give the same
    digest, so a rerun replaces its own file and a run with other settings writes another."""
    syn = result["synthetic"]
    decides = {key: result[key] for key in ("bundle", "weights_sha256", "image_size", "data", "classifier")}
    decides["classifier"] = {k: v for k, v in decides["classifier"].items() if k != "threads"}
    decides["synthetic"] = {"folder": syn["folder"], "per_class": syn["per_class"], "seeds": syn["seeds"]}
    decides["images_per_class"] = {key: result["utility"][key] for key in ("train_per_class", "test_per_class")}
    text = json.dumps(decides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sizes_arg(text: str) -> list[int | None]:
    return [None if s.strip() == "all" else int(s) for s in text.split(",") if s.strip()]


def print_table(ut: dict) -> str:
    from benchmarks.common import table
    from medgen.metrics.utility import comparisons

    classes, minority = ut["classes"], ut["minority_class"]
    tests, gains = comparisons(ut)
    rows = []
    for r in ut["rows"]:
        row = {"real/class": r["real_per_class"] if r["arm"] != "synthetic only" else 0, "arm": r["arm"],
               "N train": r["n_train"], "acc": f"{r['accuracy']:.3f}"}
        for c in classes:
            a = r["auc"][c]
            row[f"AUC {c} [95% CI]"] = f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
        for c in classes:
            row[f"F1 {c}"] = f"{r['f1'][c]:.3f}"
        t, g = tests.get((r["arm"], r["real_per_class"])), gains.get((r["arm"], r["real_per_class"]), {}).get(minority)
        if t:
            row[f"gain {minority} [95% CI]"] = f"{g['gain']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
            row["McNemar p"] = f"{t['p_value']:.3g}"
            row["p Bonf."] = "/".join(f"{s['p_bonferroni']:.3g}" for s in t["per_seed"])
        rows.append(row)
    cols = ["real/class", "arm", "N train", "acc", *(f"AUC {c} [95% CI]" for c in classes),
            *(f"F1 {c}" for c in classes), f"gain {minority} [95% CI]", "McNemar p", "p Bonf."]
    text = table(rows, cols)
    cms = "\n".join(f"  {r['real_per_class']:>4} {r['arm']:<30} {r['confusion_matrix']}" for r in ut["rows"])
    return f"{text}\n\nconfusion matrices summed over seeds (rows true {classes}, columns predicted):\n{cms}"


def target_reached(ut: dict) -> dict:
    """The minority class's AUC gain at the target sizes, for each arm compared with real only; reached when any
    arm reaches it at any of those sizes (``reached_by`` names the arms)."""
    from medgen.metrics.utility import REAL_SYN, comparisons

    at: dict[str, dict] = {}
    for (arm, size), g in comparisons(ut)[1].items():  # every arm run, with its gains at the target sizes
        at.setdefault(arm, {})
        if size in TARGET_SIZES:
            at[arm][size] = round(g[ut["minority_class"]]["gain"], 4)
    by = [arm for arm, g in at.items() if g and max(g.values()) >= TARGET_GAIN]
    return {"minority_class": ut["minority_class"], "target_gain": TARGET_GAIN, "gain_at": at.get(REAL_SYN, {}),
            "gain_at_by_arm": at, "reached": bool(by), "reached_by": by}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="cxr_ddpm, brain_mri_score, brain_mri_ldm or a bundle folder")
    parser.add_argument("--weights", help="weights trained elsewhere (default: the bundle's models/model.pt)")
    parser.add_argument("--synthetic-dir", help="samples folder to make or reuse (default runs/utility/<bundle>)")
    parser.add_argument("--synthetic-per-class", type=int, default=100, help="synthetic images per class")
    parser.add_argument("--add", default="all", help="synthetic images added per class in the real+synthetic arm: "
                        "all (every --synthetic-per-class), match (as many as the real ones) or a number")
    parser.add_argument("--sample-seed", type=int, default=0, help="first sampling seed")
    parser.add_argument("--sampler", help="default: dpmpp2m for DDPM bundles, the bundle's own for score bundles")
    parser.add_argument("--sampling-steps", type=int, help="default: the bundle's")
    parser.add_argument("--guidance", type=float, help="default: the bundle's")
    parser.add_argument("--guidance-interval", nargs="+", metavar="SIGMA",
                        help="LOW HIGH: guide only the steps whose noise level lies in it; none: every step "
                             "(default: the bundle's)")
    parser.add_argument("--guide", help="autoguidance: a guide network's weights, or none for classifier-free "
                        "guidance (default: the bundle's own choice for these weights)")
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--sizes", type=sizes_arg, default=sizes_arg("25,50,200,all"), help="real images per class")
    parser.add_argument("--seeds", default="0,1", help="classifier seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per classifier (every arm alike)")
    parser.add_argument("--fine-tune-lr", type=float, default=FINE_TUNE_LR,
                        help="peak learning rate of the arms that fine-tune the synthetic-only classifier on the real "
                             "(and on the real + synthetic) images: a quarter of the 2e-3 of training from scratch; 0 "
                             "leaves those arms out")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, help="classifier input size, real and synthetic images resized "
                        "to it (default: the weights' image size; 64 measures a 256x256 model against the same "
                        "real images as the 64x64 ones, at a sixteenth of the cost)")
    parser.add_argument("--boots", type=int, default=1000, help="bootstrap draws for the AUC intervals")
    parser.add_argument("--data", type=Path, help="folder with the data set's train and test folders")
    parser.add_argument("--train-per-class", type=int, help="load at most this many training images per class")
    parser.add_argument("--test-per-class", type=int, help="load at most this many test images per class")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscribing busy CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", help="file name (no suffix) of the JSON, PNG and HTML in --out (default "
                        "utility_<bundle>), so a control run does not replace the main one")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UtilityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from medgen.metrics.image_sets import preparation_of
    from medgen.metrics.utility import utility_experiment
    from medgen.networks.weights_meta import meta_value, read_meta
    from medgen.report.figures import utility_plot
    from medgen.report.html import write_utility_report

    t_start = time.time()
    torch.set_num_threads(args.threads)
    folder, weights = bundle_weights(args.bundle, args.weights)
    name = folder.name
    meta = read_meta(weights)
    classes = list(meta_value(meta, "classes", []) or [])
    if not classes:
        raise UtilityError(f"{weights} records no classes (no model.json beside it): use weights medgen trained")
    model_size = int(meta_value(meta, "image_size", 64))
    size = int(args.image_size or model_size)
    if size < 16:
        raise UtilityError(f"--image-size {size}: give at least 16 pixels")
    if not 0 <= args.fine_tune_lr <= 1:
        raise UtilityError(f"--fine-tune-lr {args.fine_tune_lr}: give a learning rate in (0, 1], or 0 to leave the "
                           "fine-tuned arms out")
    settings = sampling_settings(folder, args.sampler, args.sampling_steps, args.guidance, args.guidance_interval)
    settings["guide_path"] = guide_option(folder, args.guide)
    out_dir = Path(args.synthetic_dir) if args.synthetic_dir else REPO / "runs" / "utility" / name
    asked = {key: value for key, value in (("sampler", args.sampler), ("steps", args.sampling_steps),
                                           ("guidance_scale", args.guidance)) if value is not None}
    if args.guidance_interval is not None:
        asked["guidance_interval"] = settings["guidance_interval"]
    if args.guide is not None:
        asked["guide_sha256"] = None if args.guide == "none" else weights_digest(Path(args.guide))
    synthetic, syn_info = synthetic_set(folder, weights, out_dir, classes, args.synthetic_per_class,
                                        args.sample_seed, settings, size, args.sample_batch, asked)
    settings = syn_info["made_with"]  # what made the images used, which a reused folder decides
    t_real = time.time()
    real_train, real_test, data_info = real_sets(name, classes, size, preparation_of(meta), args.data,
                                                 args.train_per_class, args.test_per_class,
                                                 meta_value(meta, "class_map", None))
    print(f"real: {len(real_train)} training, {len(real_test)} test images at {size}x{size} "
          f"({time.time() - t_real:.0f} s); synthetic: {len(synthetic)}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    add = None if args.add == "all" else args.add if args.add == "match" else int(args.add)
    t_cls = time.time()
    ut = utility_experiment(real_train, synthetic, real_test, sizes=args.sizes, batch_size=args.batch_size,
                            boots=args.boots, seeds=seeds, synthetic_per_class=add, steps=args.steps, log=True,
                            fine_tune_lr=args.fine_tune_lr or None)
    result = {
        "bundle": name,
        "weights": str(weights),
        "weights_sha256": weights_digest(weights),
        "image_size": size,
        "model_image_size": model_size,
        "sampler": settings["sampler"],
        "steps": settings["steps"],
        "guidance_scale": settings["guidance_scale"],
        "guidance_interval": settings["guidance_interval"],
        "guide": settings["guide"],
        "guide_sha256": settings["guide_sha256"],
        "synthetic": syn_info,
        "data": data_info,
        "classifier": {"steps": args.steps, "batch_size": args.batch_size, "seeds": seeds,
                       "sizes": ["all" if n is None else n for n in args.sizes],
                       "synthetic_added_per_class": args.add,
                       "fine_tune_lr": args.fine_tune_lr or None,
                       "network": "medgen.metrics.classifier.build_classifier",
                       "boots": args.boots, "threads": args.threads},
        "target": None,
        "seconds": {"sampling": syn_info["sampling_seconds"], "classifiers": round(time.time() - t_cls, 1),
                    "total": 0.0},
        "machine": machine(),
        "utility": ut,
    }
    result["target"] = target_reached(ut)
    result["seconds"]["total"] = round(time.time() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"utility_{name}"
    path = write_json(stem, result, args.out)
    kept = write_json(f"utility-{settings_digest(result)}", result, out_dir)
    latest = write_json("utility", result, out_dir)
    guided = (f"autoguidance {settings['guidance_scale']}" if settings["guide_sha256"]
              else f"guidance {settings['guidance_scale']}")
    if settings["guidance_interval"]:
        guided += f" at sigma in {settings['guidance_interval']}"
    fig = utility_plot(ut, f"{name}: {settings['sampler']}-{settings['steps']}, {guided}, {args.synthetic_per_class} "
                           f"synthetic per class, seeds {seeds}, {args.steps} steps per classifier"
                           + (f", classifier at {size}x{size}" if size != model_size else ""))
    png = args.out / f"{stem}.png"
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    html = write_utility_report(args.out / f"{stem}.html", result)
    print()
    print(print_table(ut))
    tgt = result["target"]
    gains = "; ".join(f"{arm} {g}" for arm, g in tgt["gain_at_by_arm"].items())
    print(f"\ntarget: AUC gain >= +{TARGET_GAIN:.2f} for the minority class ({tgt['minority_class']}) at "
          f"{'/'.join(map(str, TARGET_SIZES))} real per class: gain {gains} -> "
          + (f"reached by {', '.join(tgt['reached_by'])}" if tgt["reached"] else "not reached"))
    print(f"seconds: {result['seconds']}")
    print(f"written {path}, {png}, {html}, {kept} and {latest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
