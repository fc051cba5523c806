"""The quality protocol for a bundle's weights: FID / KID / precision / recall per class next to the real-data floor.

    python -m benchmarks.quality --bundle cxr_ddpm                    # the shipped weights, the bundle's sampler
    python -m benchmarks.quality --bundle cxr_ddpm --weights runs/cxr_ddpm/X/model.pt --sampler dpmpp2m --steps 15
    python -m benchmarks.quality --bundle cxr_ddpm --sweep --per-class 100   # FID ratio vs steps and guidance
    python -m benchmarks.quality --bundle cxr_ldm --sweep --samplers dpmpp2m --sweep-steps 20 --sweep-guidance 1.5 2
        --sweep-intervals none 0,5 0,11 --sweep-grid full --per-class 100   # and vs the guidance interval
    python -m benchmarks.quality --bundle cxr_ddpm --check            # do the weights match the JSON cards quote?
    python -m benchmarks.quality --bundle cxr_ldm --autoencoder-ceiling   # + its reconstructions scored as samples

What is compared with what is :mod:`medgen.metrics.protocol` (N generated per class = the held-out count, capped at
500; the floor is held-out real vs the training reference at the same N). Images are generated through the bundle's
own ``inference.yaml`` (the same code as ``medgen sample``) into a samples folder that a rerun resumes and that
``medgen evaluate`` reads too. Class k uses seeds ``seed + 100000 k + i``. The JSON (``benchmarks/results/
quality_<bundle>.json``) records the weights' sha256 (a latent bundle's also its autoencoder's, which names the samples
folder too: another decoder, other images), sampler, steps, guidance, seeds and machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, RESULTS, machine, table, write_json

CLASS_SEED_STRIDE = 100_000


def data_root() -> str:
    return os.environ.get("MEDGEN_DATA_DIR") or str(REPO.parent / "shared" / "data")


def bundle_datalist(bundle: Path, dataset_dir: str | None) -> dict:
    """The datalist the bundle's training builds (same classes, class map, split and seed), without a run folder."""
    from monai.bundle import ConfigParser

    from medgen.bundles import config_file

    os.environ.setdefault("MEDGEN_DATA_DIR", data_root())
    parser = ConfigParser()
    # a latent bundle's two stages build the same datalist; the autoencoder stage needs no weights to do it
    stage = "train_autoencoder" if (bundle / "configs" / "train_autoencoder.yaml").is_file() else "train"
    parser.read_config(str(config_file(bundle, stage)))
    scratch = tempfile.mkdtemp(prefix="medgen-quality-")
    overrides: dict[str, Any] = {"output_dir": scratch, "resume": False, "bundle_root": str(bundle)}
    if dataset_dir:
        overrides["dataset_dir"] = dataset_dir
    parser.update(overrides)
    return parser.get_parsed_content("datalist")


def sampler_overrides(bundle: Path, sampler: str | None, steps: int | None, guidance: float | None,
                      interval: list[str] | None = None) -> dict:
    """Only the sampling keys this bundle's inference.yaml has (the score bundle has no ``dpmpp2m``); ``interval``
    as ``--guidance-interval`` takes it (LOW HIGH, or none)."""
    from medgen.bundles import read_config
    from medgen.cli import guidance_interval_arg

    keys = read_config(bundle, "inference")
    given = {"sampler": sampler, "num_inference_steps": steps, "guidance_scale": guidance}
    out = {k: v for k, v in given.items() if v is not None}
    if interval is not None:
        out["guidance_interval"] = guidance_interval_arg(interval)
    unknown = [k for k in out if k not in keys]
    if unknown:
        raise SystemExit(f"benchmarks.quality: error: bundle {bundle.name} has no sampling key(s) {unknown}")
    if sampler is not None and steps is None:
        from medgen.diffusion.solvers import DEFAULT_STEPS

        if sampler in DEFAULT_STEPS:
            out["num_inference_steps"] = DEFAULT_STEPS[sampler]
    return out


def generate(bundle: Path, weights: Path, counts: dict[str, int], sampling: dict, seed: int, out_dir: Path,
             batch_size: int | str | None, guide: Path | None = None) -> dict[str, list[int]]:
    """``counts[c]`` images of each class into ``out_dir`` with the bundle's inference config (autoguided by
    ``guide``, else classifier-free guidance); returns the seeds."""
    from medgen.bundles import config_file, read_config, run_bundle
    from medgen.config import check_run

    seeds = {}
    for k, (name, n) in enumerate(counts.items()):
        overrides = {"ckpt_path": str(weights), "output_dir": str(out_dir), "per_class": n, "class_names": [name],
                     "seed": seed + CLASS_SEED_STRIDE * k, **sampling}
        if "guide_path" in read_config(bundle, "inference"):
            overrides["guide_path"] = str(guide) if guide else "none"
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        check_run(config_file(bundle, "inference"), overrides)
        run_bundle(bundle, "inference", "inference", overrides)
        seeds[name] = [seed + CLASS_SEED_STRIDE * k, seed + CLASS_SEED_STRIDE * k + n - 1]
    return seeds


def check_sampling(bundle: Path, weights: Path, sampling: dict) -> None:
    """The bundle's own check of sampling values (steps, guidance, sampler): one line, before any work."""
    from medgen.bundles import config_file, read_config
    from medgen.config import check_run
    from medgen.networks.weights_meta import meta_value, read_meta

    aliases = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "sampler": "--sampler",
               "guidance_interval": "--guidance-interval"}
    # the weights' own schedule length, so steps beyond it are refused here rather than deep in the sampler
    timesteps = {"num_train_timesteps": meta_value(read_meta(weights), "num_train_timesteps", 1000)}
    if "num_train_timesteps" not in read_config(bundle, "inference"):
        timesteps = {}
    check_run(config_file(bundle, "inference"), {"ckpt_path": str(weights), **timesteps, **sampling}, aliases)


def effective_sampling(bundle: Path, sampling: dict) -> dict:
    from medgen.bundles import read_config

    cfg = read_config(bundle, "inference")
    keys = ("sampler", "num_inference_steps", "guidance_scale", "guidance_interval", "n_steps_each")
    out = {k: sampling.get(k, cfg.get(k)) for k in keys if k in cfg or k in sampling}
    if out.get("guidance_interval", "") is None:  # guided at every step: recorded as before the key existed
        del out["guidance_interval"]
    return out


class RealSets:
    """Reference and held-out real features, prepared as the weights' training prepared them (computed once)."""

    def __init__(self, datalist: dict, size: int, preparation: dict, seed: int = 0) -> None:
        from medgen.metrics.features import extract_features, get_extractor
        from medgen.metrics.image_sets import load_datalist_split
        from medgen.metrics.protocol import HELDOUT_CAP, REFERENCE_CAP, heldout_split

        self.extractor = get_extractor("inception")
        t0 = time.perf_counter()
        reference = load_datalist_split(datalist, "training", size=size, per_class=REFERENCE_CAP, seed=seed,
                                        **preparation)
        heldout = load_datalist_split(datalist, heldout_split(datalist), size=size, per_class=HELDOUT_CAP, seed=seed,
                                      **preparation)
        self.reference = (extract_features(self.extractor, reference), reference.labels)
        self.heldout = (extract_features(self.extractor, heldout), heldout.labels)
        self.heldout_images = heldout
        self.seconds = time.perf_counter() - t0
        self.size = size

    def score(self, samples_dir: Path, classes: list[str], seed: int = 0, counts: dict[str, int] | None = None) -> dict:
        """Score the samples in ``samples_dir``; with ``counts``, the first ``counts[c]`` of each class only (a folder
        a larger run filled holds more than this run asked for)."""
        from medgen.metrics.features import extract_features
        from medgen.metrics.image_sets import load_samples_dir
        from medgen.metrics.protocol import score_protocol

        generated = load_samples_dir(samples_dir, size=self.size, classes=classes)
        if counts is not None:
            generated = generated.subset(np.concatenate(
                [np.flatnonzero(generated.labels == k)[:counts.get(name, 0)] for k, name in enumerate(classes)]))
        feats = extract_features(self.extractor, generated, use_cache=False)
        return score_protocol(classes, self.reference, (feats, generated.labels), self.heldout, seed=seed)

    def score_reconstructions(self, autoencoder: Path, counts: dict[str, int], seed: int = 0) -> dict:
        """The protocol's figures for the autoencoder's reconstructions of ``counts`` held-out images per class in
        place of samples: the ceiling of any diffusion model on its latents, in the samples' own terms."""
        import torch

        from medgen.autoencoder import load_autoencoder, reconstruct
        from medgen.metrics.features import extract_features
        from medgen.metrics.image_sets import ImageSet
        from medgen.metrics.protocol import score_protocol

        network, _ = load_autoencoder(autoencoder)
        held = self.heldout_images
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(held.labels == k))[:n]
                               for k, n in enumerate(counts.values())])
        with torch.no_grad():
            out = reconstruct(network, torch.from_numpy(held.images[keep]).float() * 2 - 1)
        recon = ImageSet(((out + 1) / 2).numpy(), held.labels[keep], held.classes)
        feats = extract_features(self.extractor, recon, use_cache=False)
        return score_protocol(list(counts), self.reference, (feats, recon.labels), self.heldout, seed=seed)


def samples_folder(root: Path, bundle: str, sha: str, sampling: dict, seed: int,
                   autoencoder_sha: str | None = None, guide_sha: str | None = None) -> Path:
    """Named by the weights, the decoder (latent bundles: another decoder, other images), the guide, sampling and
    seed."""
    tag = "-".join(f"gi{v[0]:g}-{v[1]:g}" if isinstance(v, (list, tuple)) else f"{v}" for k, v in sampling.items()
                   if not (k == "guidance_interval" and v is None))  # guided at every step: named as before
    decoder = f"-ae{autoencoder_sha[:8]}" if autoencoder_sha else ""
    guide = f"-guide{guide_sha[:8]}" if guide_sha else ""
    return root / bundle / f"{sha[:12]}{decoder}{guide}-{tag}-s{seed}"


def bundle_guide(bundle: Path, given: str | None, weights: Path) -> Path | None:
    """The autoguidance guide to sample ``weights`` with: ``--guide`` (a path, or ``none`` for classifier-free
    guidance), else what the bundle's ``guide_path`` gives them (its shipped guide for its shipped weights)."""
    from medgen.bundles import read_config
    from medgen.diffusion.guide import default_guide

    if given:
        return None if given.lower() == "none" else Path(given).resolve()
    raw = read_config(bundle, "inference").get("guide_path")
    if not raw:
        return None
    if isinstance(raw, str) and raw.startswith("$"):
        found = default_guide(bundle, weights)
        return Path(found) if found else None
    return Path(raw)


def autoencoder_beside(weights: Path, meta: dict | None) -> Path | None:
    """The autoencoder that decodes latent diffusion ``weights`` (the file their metadata names, beside them), or
    None for pixel weights: part of what a latent bundle's figures were measured on."""
    from medgen.networks.weights_meta import meta_value

    if meta_value(meta, "route") != "latent":
        return None
    return weights.parent / (meta_value(meta, "autoencoder_file") or "model_autoencoder.pt")


def check_quoted(bundle: Path, weights: Path, json_path: Path) -> int:
    """Exit 0 when the weights (and, for a latent bundle, the autoencoder beside them) are those the protocol JSON
    (the figures model cards quote) was measured on."""
    import json

    from medgen.networks.weights_meta import read_meta, sha256_of

    if not json_path.is_file():
        raise SystemExit(f"benchmarks.quality: error: no protocol results at {json_path}: run "
                         f"python -m benchmarks.quality --bundle {bundle.name} first")
    results = json.loads(json_path.read_text())
    files = [(weights, results.get("weights_sha256"))]
    autoencoder = autoencoder_beside(weights, read_meta(weights, warn=False))
    if autoencoder is not None:
        files.append((autoencoder, results.get("autoencoder_sha256")))
    if results.get("guide_sha256"):  # measured with autoguidance: the bundle's own guide
        guide = bundle_guide(bundle, None, weights)
        if guide is None:
            raise SystemExit(f"benchmarks.quality: error: {json_path} was measured with an autoguidance guide, but "
                             f"bundle {bundle.name} has no guide for these weights")
        files.append((guide, results["guide_sha256"]))
    for path, quoted in files:
        actual = sha256_of(path)
        if quoted != actual:
            raise SystemExit(f"benchmarks.quality: error: {path} has sha256 {actual[:16]}..., but {json_path} was "
                             f"measured on {str(quoted)[:16]}...: the figures quoted from it are not these weights'; "
                             f"rerun python -m benchmarks.quality --bundle {bundle.name}")
        print(f"{path}: sha256 {actual[:16]}... matches {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="cxr_ddpm", help="bundle name or folder")
    ap.add_argument("--weights", help="model.pt or checkpoint (default: the bundle's models/model.pt)")
    ap.add_argument("--dataset-dir", help="the real data (default: the bundle's, under MEDGEN_DATA_DIR)")
    ap.add_argument("--sampler", help="sampler (default: the bundle's inference.yaml)")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the sampler's default)")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance scale (1.0 = none)")
    ap.add_argument("--guidance-interval", nargs="+", metavar="SIGMA",
                    help="LOW HIGH: guide only the steps whose noise level lies in it; none: every step (default: "
                         "the bundle's)")
    ap.add_argument("--per-class", type=int, help="fewer generated images per class than the protocol's N "
                                                  "(a cheaper run; the floor is measured at the same N)")
    ap.add_argument("--seed", type=int, default=20_000, help="first seed (class k: seed + 100000 k + i)")
    ap.add_argument("--batch-size", help="sampling batch size, or auto")
    ap.add_argument("--guide", help="autoguidance guide weights (model.pt of a smaller, shorter-trained model), or "
                    "none for classifier-free guidance (default: the bundle's guide_path)")
    ap.add_argument("--samples-root", help="where the samples folders go (default: $MEDGEN_RUNS_DIR or ./runs, "
                                           "under quality/)")
    ap.add_argument("--sweep", action="store_true", help="FID ratio vs steps and guidance scale for --samplers")
    ap.add_argument("--samplers", nargs="+", default=["dpmpp2m", "ddim"])
    ap.add_argument("--sweep-steps", type=int, nargs="+", default=[10, 15, 20, 50])
    ap.add_argument("--sweep-guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--sweep-intervals", nargs="+", metavar="LOW,HIGH",
                    help="with --sweep: also every guidance interval given (LOW,HIGH or none, e.g. none 0,5 0,11)")
    ap.add_argument("--sweep-grid", choices=["full", "slices"], default="slices",
                    help="slices: guidance at --slice-steps, then steps at the best guidance (cheaper); full: all")
    ap.add_argument("--slice-steps", type=int, default=15)
    ap.add_argument("--autoencoder-ceiling", action="store_true",
                    help="latent bundles: also score the autoencoder's reconstructions of held-out images (the "
                         "ceiling of any diffusion model on its latents) as samples are scored")
    ap.add_argument("--check", action="store_true", help="only check the weights' sha256 against --json")
    ap.add_argument("--json", help="results file (default: benchmarks/results/quality_<bundle>.json)")
    args = ap.parse_args(argv)

    from medgen.bundles import find_bundle
    from medgen.diffusion.sample_run import seeds_on_disk
    from medgen.metrics.protocol import ProtocolError, check_per_class, protocol_counts, ratio_rows
    from medgen.networks.weights_meta import image_size_of, read_meta, sha256_of

    try:
        bundle = find_bundle(args.bundle)
    except FileNotFoundError as err:
        raise SystemExit(f"benchmarks.quality: error: {err}") from None
    weights = Path(args.weights).resolve() if args.weights else bundle / "models" / "model.pt"
    name = "quality_sweep" if args.sweep else "quality"
    json_path = Path(args.json) if args.json else RESULTS / f"{name}_{bundle.name}.json"
    if not weights.is_file():
        raise SystemExit(f"benchmarks.quality: error: no weights at {weights}: train the bundle "
                         f"(medgen train {bundle.name}) and pass --weights PATH")
    if args.check:
        return check_quoted(bundle, weights, json_path)
    meta = read_meta(weights)
    datalist = bundle_datalist(bundle, args.dataset_dir)
    classes = list(datalist["classes"])
    full = protocol_counts(datalist)
    try:
        counts = check_per_class(full, args.per_class)
    except ProtocolError as err:
        raise SystemExit(f"benchmarks.quality: error: {err}") from None
    from medgen.metrics.image_sets import preparation_of

    size = image_size_of(meta, 64)
    sha = sha256_of(weights)
    autoencoder = autoencoder_beside(weights, meta)
    ae_sha = sha256_of(autoencoder) if autoencoder is not None and autoencoder.is_file() else None
    guide = bundle_guide(bundle, args.guide, weights)
    if guide is not None and not guide.is_file():
        raise SystemExit(f"benchmarks.quality: error: no guide weights at {guide}")
    guide_sha = sha256_of(guide) if guide is not None else None
    root = Path(args.samples_root or os.environ.get("MEDGEN_RUNS_DIR") or "runs") / "quality"
    print(f"bundle {bundle.name}  weights {weights} (sha256 {sha[:16]}...)  {size}px  generated per class {counts}")
    if counts != full:
        print(f"fewer images per class than the protocol's N {full}: FID is biased upwards by about 1/N, the floor's "
              f"more than that of samples far from it, so FID / floor falls with N; compare ratios only at one N "
              f"(KID is unbiased)")
    if guide is not None:
        print(f"autoguidance: guide {guide} (sha256 {guide_sha[:16]}...)")
    base = sampler_overrides(bundle, args.sampler, args.steps, args.guidance, args.guidance_interval)
    settings = [base] if not args.sweep else [sampler_overrides(bundle, s, n, g, iv) for s in args.samplers
                                              for n in args.sweep_steps for g in args.sweep_guidance
                                              for iv in sweep_intervals(args)]
    for sampling in settings:  # every value checked before any work
        check_sampling(bundle, weights, sampling)
    real = RealSets(datalist, size, preparation_of(meta))
    print(f"real features: reference {len(real.reference[0])} training images, held-out {len(real.heldout[0])} "
          f"({real.seconds:.0f} s, cached after the first run)")

    def one(sampling: dict) -> dict:
        sampling = {**effective_sampling(bundle, sampling), **sampling}
        folder = samples_folder(root, bundle.name, sha, sampling, args.seed, ae_sha, guide_sha)
        found = len(seeds_on_disk(folder))  # what the sampler skips, so the seconds below are those of the rest
        t0 = time.perf_counter()
        seeds = generate(bundle, weights, counts, sampling, args.seed, folder, args.batch_size, guide)
        gen_s = time.perf_counter() - t0
        result = real.score(folder, classes, counts=counts)
        return {"sampling": sampling, "seeds": seeds, "samples_dir": str(folder),
                "generation_seconds": round(gen_s, 1), "images_generated": len(seeds_on_disk(folder)) - found,
                "images_found_on_disk": found, **result}

    payload: dict[str, Any] = {"bundle": bundle.name, "weights": str(weights), "weights_sha256": sha,
                               **({"autoencoder": str(autoencoder), "autoencoder_sha256": ae_sha} if ae_sha else {}),
                               **({"guide": str(guide), "guide_sha256": guide_sha} if guide_sha else {}),
                               "image_size": size, "counts": counts, "protocol_counts": full, "machine": machine(),
                               "datalist_source": str(datalist.get("source")), "seed": args.seed}
    if not args.sweep:
        run = one(base)
        payload.update(run)
        print(f"\nsampler {run['sampling']}  ({run['images_generated']} images generated in "
              f"{run['generation_seconds']:.0f} s, {run['images_found_on_disk']} found on disk)")
        print(table(ratio_rows(run), ["class", "N", "FID", "floor FID", "FID / floor", "KID", "floor KID",
                                      "precision", "recall"]))
        if args.autoencoder_ceiling and ae_sha:
            payload["autoencoder_ceiling"] = real.score_reconstructions(autoencoder, counts)
            print("\nthe autoencoder's reconstructions of held-out images in place of samples (its ceiling):")
            print(table(ratio_rows(payload["autoencoder_ceiling"]), ["class", "N", "FID", "floor FID", "FID / floor",
                                                                     "precision", "recall"]))
    else:
        payload["runs"] = sweep(args, bundle, one)
        rows = [{"sampler": r["sampling"].get("sampler"), "steps": r["sampling"].get("num_inference_steps"),
                 "guidance": r["sampling"].get("guidance_scale"),
                 **({"interval": r["sampling"].get("guidance_interval") or "every step"}
                    if args.sweep_intervals else {}),
                 **{f"{c} FID/floor": r["classes"][c]["fid_ratio"] for c in classes},
                 "overall FID/floor": r["overall"]["fid_ratio"], "KID": r["overall"]["generated"].get("kid"),
                 "s": r["generation_seconds"]} for r in payload["runs"]]
        payload["best_at_most_20_steps"] = best_setting(payload["runs"], 20)
        print(table(rows, list(rows[0])))
        print(f"best at <= 20 steps: {payload['best_at_most_20_steps']}")
    print(f"\nwrote {write_json(json_path.stem, payload, json_path.parent)}")
    return 0


def sweep_intervals(args: argparse.Namespace) -> list[list[str] | None]:
    """The guidance intervals a sweep runs, as ``--guidance-interval`` takes them: each ``LOW,HIGH`` or ``none`` of
    ``--sweep-intervals``, else ``--guidance-interval`` alone (None: the bundle's)."""
    if not args.sweep_intervals:
        return [args.guidance_interval]
    return [v.split(",") for v in args.sweep_intervals]


def sweep(args: argparse.Namespace, bundle: Path, one) -> list[dict]:
    """Every (sampler, steps, guidance, interval), or the cheaper slices: guidance (and interval) at
    ``--slice-steps``, then steps at the best of those for that sampler."""
    runs = []
    for sampler in args.samplers:
        if args.sweep_grid == "full":
            for steps in args.sweep_steps:
                for g in args.sweep_guidance:
                    for iv in sweep_intervals(args):
                        runs.append(one(sampler_overrides(bundle, sampler, steps, g, iv)))
            continue
        by_guidance = [one(sampler_overrides(bundle, sampler, args.slice_steps, g, iv)) for g in args.sweep_guidance
                       for iv in sweep_intervals(args)]
        runs += by_guidance
        best = min(by_guidance, key=lambda r: r["overall"]["fid_ratio"] or np.inf)["sampling"]
        best_g, best_iv = best["guidance_scale"], best.get("guidance_interval")
        iv_arg = ["none"] if best_iv is None else [str(v) for v in best_iv]
        runs += [one(sampler_overrides(bundle, sampler, s, best_g, iv_arg)) for s in args.sweep_steps
                 if s != args.slice_steps]
    return runs


def best_setting(runs: list[dict], max_steps: int) -> dict | None:
    ok = [r for r in runs if (r["sampling"].get("num_inference_steps") or 0) <= max_steps]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["overall"]["fid_ratio"] or np.inf)
    return {**best["sampling"], "overall_fid_ratio": best["overall"]["fid_ratio"]}


if __name__ == "__main__":
    sys.exit(main())
