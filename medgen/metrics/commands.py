"""Entry points for the ``medgen`` CLI verbs ``evaluate``, ``audit``, ``drift``, ``fit-gate`` and
``sample --quality-filter``: plain functions with plain arguments that return a process exit code.

Exit codes: 0 = ran and passed; 1 = ran and the gate failed (flagged images / drift detected); 2 = bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from medgen.fileio import write_json_atomic
from medgen.folder_lock import holds_output_folder
from medgen.metrics.errors import ImageSetError, TooFewImagesError, WeightsUnavailableError
from medgen.metrics.features import DomainFeatures, FeatureExtractor, InceptionFeatures, extract_features

BAD_INPUT = (ImageSetError, TooFewImagesError, WeightsUnavailableError, FileNotFoundError, ValueError)


def _error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def build_extractors(
    features: str | Sequence[str],
    datalist: str | os.PathLike | None = None,
    domain_weights: str | os.PathLike | None = None,
    size: int = 64,
    channels: int | None = None,
) -> dict[str, FeatureExtractor]:
    """``"inception,domain"`` -> extractors; the domain classifier is trained on ``datalist`` once if not given,
    on images of ``channels`` (1 grey, 3 RGB; None: the datalist's own)."""
    names = [f.strip() for f in (features.split(",") if isinstance(features, str) else features) if f.strip()]
    out: dict[str, FeatureExtractor] = {}
    for name in names:
        if name == "inception":
            out[name] = InceptionFeatures()
        elif name == "domain":
            if domain_weights is None and datalist is not None and str(datalist).endswith(".json"):
                from medgen.metrics.domain_model import ensure_domain_classifier

                domain_weights = ensure_domain_classifier(datalist, size=size, log=True, channels=channels)
            if domain_weights is None:
                raise ValueError(
                    "domain features need --domain-weights (a classifier checkpoint) or a datalist to train one on."
                )
            out[name] = DomainFeatures(domain_weights)
        else:
            raise ValueError(f"unknown feature extractor {name!r}; choose from 'inception', 'domain'.")
    return out


def _sizes(spec: str | Sequence | None) -> list[int | None] | None:
    if not spec:
        return None
    items = spec.split(",") if isinstance(spec, str) else spec
    return [None if str(s).strip() in ("all", "None") else int(s) for s in items]


@holds_output_folder("evaluation", "evaluate")
def evaluate_command(
    samples_dir: str,
    datalist: str,
    out_dir: str,
    size: int | None = None,
    features: str = "inception,domain",
    domain_weights: str | None = None,
    max_real_per_class: int | None = None,
    utility_sizes: str | None = None,
    report: bool = True,
    utility_json: str | None = None,
    redact_paths: bool = False,
    judge: bool = True,
    judge_classifier: str | None = None,
) -> int:
    """``medgen evaluate SAMPLES_DIR DATALIST OUT_DIR``: metrics.json + report.html (gate on ``audit``, not here).

    ``redact_paths``: training files named by their place in the datalist, no real pixels in the report.

    ``size`` defaults to the image size recorded with the weights that made the samples (else 64); samples of
    weights trained on other classes than the datalist's are refused.
    """
    from medgen.metrics.evaluate import check_evaluation_folder, evaluate
    from medgen.metrics.image_sets import channels_of
    from medgen.networks.weights_meta import image_size_of, samples_meta

    meta = samples_meta(samples_dir)
    size = size or image_size_of(meta, 64)
    try:
        check_evaluation_folder(out_dir, samples_dir, datalist, report=report, judge=judge)  # before any model loads
        if meta and meta.get("classes") and Path(datalist).suffix == ".json" and Path(datalist).is_file():
            real = json.loads(Path(datalist).read_text()).get("classes")
            if real and list(real) != list(meta["classes"]):
                raise ValueError(f"the samples in {samples_dir} come from weights trained on classes "
                                 f"{meta['classes']}, but {datalist} has classes {real}: give the datalist the "
                                 "weights were trained on (datalist.json in their run folder)")
        if utility_json:  # a missing or wrong utility JSON stops the run before any work
            from medgen.metrics.utility import read_utility_json

            read_utility_json(utility_json)
        extractors = build_extractors(features, datalist, domain_weights, size, channels_of(meta))
        m = evaluate(
            samples_dir,
            datalist,
            out_dir,
            extractors,
            size=size,
            max_real_per_class=max_real_per_class,
            audit_extractor="domain" if "domain" in extractors else None,
            utility_sizes=_sizes(utility_sizes),
            utility_json=utility_json,
            report=report,
            redact_paths=redact_paths,
            judge=judge,
            judge_classifier=judge_classifier,
        )
    except BAD_INPUT as e:
        return _error(e)
    if m.get("generated_skipped"):
        from medgen.metrics.image_sets import left_out_text

        print(f"samples left out: {left_out_text(m['generated_skipped'])} (metrics.json: generated_skipped)")
    overall = m["generated"]["overall"]
    for name in extractors:
        f, k = overall[name]["fid"], overall[name]["kid"]
        print(f"{name}: FID {f.get('value', f.get('error'))}, KID {k.get('mean', k.get('error'))}")
    print(f"memorisation: {m['memorisation']['n_flagged']} of {m['n_generated']} generated images flagged")
    if "judge" in m:  # classifier-judged section
        from medgen.metrics.judge import judge_table

        print(f"judge: {m['judge']['error']}" if "error" in m["judge"] else judge_table(m["judge"]))
    if not redact_paths:
        print("PHI: metrics.json names training files and report.html shows real training images; treat them as "
              "patient data, or run with --redact-paths")
    print(f"wrote {Path(out_dir) / 'metrics.json'}" + (f" and {Path(out_dir) / 'report.html'}" if report else ""))
    return 0


@holds_output_folder("audit", "audit")
def audit_command(
    samples_dir: str,
    datalist: str,
    out_dir: str,
    size: int = 64,
    percentile: float = 1.0,
    features: str = "domain",
    domain_weights: str | None = None,
    max_train_per_class: int | None = None,
    pairs: int = 8,
    redact_paths: bool = False,
) -> int:
    """``medgen audit SAMPLES_DIR DATALIST OUT_DIR``: audit.json + closest_pairs.png; exit 1 if any image is flagged.

    Both are patient data (PHI): audit.json names training files, closest_pairs.png shows their pixels.
    ``redact_paths``: training files are named by their place in the datalist (``training[17]``) and
    closest_pairs.png is not written.
    """
    from medgen.fileio import write_json_atomic
    from medgen.metrics.evaluate import heldout_split
    from medgen.metrics.image_sets import load_datalist_split, load_samples_dir, preparation_of, read_datalist
    from medgen.metrics.memorisation import PHI_NOTE, closest_pairs_png, memorisation_audit, redacted_ids
    from medgen.networks.weights_meta import samples_meta

    try:
        data = read_datalist(datalist)
        gen = load_samples_dir(samples_dir, size=size, classes=data["classes"])
        prep = preparation_of(samples_meta(samples_dir))  # real images prepared as the weights' training did
        prep["channels"] = gen.channels  # real images compared in the samples' colour (grey or RGB)
        train = load_datalist_split(datalist, "training", size=size, per_class=max_train_per_class, **prep)
        held = load_datalist_split(datalist, heldout_split(data), size=size, **prep)
        ex = next(iter(build_extractors(features, datalist, domain_weights, size, gen.channels).values()),
                  None) if features else None
        f = [extract_features(ex, s) for s in (gen, train, held)] if ex else [None] * 3
        result = memorisation_audit(gen.images, train.images, held.images, *f, percentile=percentile)
    except BAD_INPUT as e:
        return _error(e)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = os.path.dirname(os.path.abspath(datalist))
    summary = result.summary(gen.ids, redacted_ids(train.ids, data, root) if redact_paths else train.ids)
    summary["redacted_paths"] = bool(redact_paths)
    summary["generated_skipped"] = dict(gen.skipped)  # samples deleted from the folder or damaged, by reason
    if gen.skipped:
        from medgen.metrics.image_sets import left_out_text

        print(f"samples left out: {left_out_text(gen.skipped)} (audit.json: generated_skipped)")
    pairs_png = out / "closest_pairs.png"
    if redact_paths:
        pairs_png.unlink(missing_ok=True)  # an earlier unredacted audit's real pixels do not stay behind
        summary["closest_pairs"] = None
    else:
        summary["closest_pairs"] = closest_pairs_png(gen.images, train.images, result, pairs_png, n=pairs).name
    write_json_atomic(summary, out / "audit.json", indent=2)
    print(
        f"memorisation audit: {summary['n_flagged']} of {summary['n_generated']} flagged "
        f"(aligned threshold {summary['threshold_aligned']:.4f}: flips, crops, shifts, rotations and intensity "
        f"changes searched); wrote {out / 'audit.json'}" + ("" if redact_paths else f" and {pairs_png}")
    )
    if summary.get("heldout_near_copies"):
        print(f"warning: {summary['heldout_near_copies']} held-out images are near copies of training images "
              "(duplicates across the datalist's splits); they were left out of the reference distances")
    print(PHI_NOTE)
    return 1 if summary["n_flagged"] else 0


def drift_command(
    reference: str,
    new: str,
    out: str | None = None,
    size: int = 64,
    features: str = "domain",
    domain_weights: str | None = None,
    reference_split: str = "test",
    new_split: str = "test",
    permutations: int = 500,
    alpha: float = 0.05,
) -> int:
    """``medgen drift REFERENCE NEW``: MMD permutation test; exit 1 if p < alpha (drift detected).

    REFERENCE and NEW are each a datalist JSON (its ``*_split``), a samples folder or an image folder.
    """
    from medgen.metrics.drift import mmd_test
    from medgen.metrics.image_sets import load_image_set

    try:
        ref = load_image_set(reference, size=size, split=reference_split)
        cur = load_image_set(new, size=size, split=new_split, channels=ref.channels)
        dl = reference if str(reference).endswith(".json") else None
        ex = next(iter(build_extractors(features, dl, domain_weights, size, ref.channels).values()))
        result = mmd_test(extract_features(ex, ref), extract_features(ex, cur), permutations=permutations)
    except BAD_INPUT as e:
        return _error(e)
    result.update(features=ex.name, alpha=alpha, drift=result["p_value"] < alpha)
    print(f"MMD^2 {result['mmd2']:.5f}, p = {result['p_value']:.4f} -> {'DRIFT' if result['drift'] else 'no drift'}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(result, out, indent=2)
    return 1 if result["drift"] else 0


def gate_weights_file(gate_path: str | os.PathLike) -> Path:
    """Where ``fit-gate`` keeps the gate's domain classifier: beside the gate (``domain_classifier.pt`` for the
    ``quality_gate.npz`` a bundle's ``models/`` holds for ``medgen serve``, else ``<gate>_domain.pt``)."""
    gate_path = Path(gate_path)
    name = "domain_classifier.pt" if gate_path.name == "quality_gate.npz" else f"{gate_path.stem}_domain.pt"
    return gate_path.with_name(name)


def fit_gate_command(
    datalist: str,
    out: str,
    size: int = 64,
    features: str = "domain",
    domain_weights: str | None = None,
    percentile: float = 95.0,
    k: int = 5,
) -> int:
    """``medgen fit-gate DATALIST OUT.npz``: fit the quality gate (manifold = training, threshold = held-out).

    The domain classifier the features come from is copied beside the gate and recorded in it (with the datalist,
    image size and channels), so ``medgen sample --quality-filter OUT.npz`` needs nothing else. The gate is fitted
    on the datalist's images in their own channels (RGB for a colour data set) and later refuses the other kind.
    """
    from medgen.metrics.evaluate import heldout_split
    from medgen.metrics.image_sets import load_datalist_split, read_datalist
    from medgen.metrics.quality_gate import QualityGate

    try:
        data = read_datalist(datalist)
        train = load_datalist_split(datalist, "training", size=size)
        held = load_datalist_split(datalist, heldout_split(data), size=size, channels=train.channels)
        if str(features).split(",")[0].strip() == "domain" and domain_weights is None:
            from medgen.metrics.domain_model import ensure_domain_classifier

            domain_weights = ensure_domain_classifier(datalist, size=size, log=True, channels=train.channels)
        name, ex = next(iter(build_extractors(features, datalist, domain_weights, size, train.channels).items()))
        gate = QualityGate(k, percentile).fit(extract_features(ex, train), extract_features(ex, held))
    except BAD_INPUT as e:
        return _error(e)
    gate.meta = {"features": name, "size": size, "k": k, "percentile": percentile,
                 "datalist": str(Path(datalist).resolve())}
    if train.channels != 1:  # grey gates stay as they were; a gate without the key is grey
        gate.meta["channels"] = train.channels
    if name == "domain":
        beside = gate_weights_file(out)
        beside.parent.mkdir(parents=True, exist_ok=True)
        if Path(domain_weights).resolve() != beside.resolve():
            shutil.copyfile(domain_weights, beside)
        gate.meta.update(domain_weights=beside.name, domain_weights_cached=str(Path(domain_weights).resolve()))
    gate.save(out)
    write_json_atomic({**gate.meta, "threshold": gate.threshold}, str(out) + ".json", indent=None)
    colour = ", RGB images" if train.channels == 3 else ""
    print(f"quality gate: threshold {gate.threshold:.4f} (k={k}, percentile {percentile:g}, {name} features{colour}); "
          f"wrote {out}" + (f" and {gate_weights_file(out)}" if name == "domain" else ""))
    return 0


def load_gate(gate_path: str | os.PathLike, domain_weights: str | os.PathLike | None = None) -> tuple:
    """``(gate, extractor, info)`` for ``medgen sample --quality-filter GATE``.

    The domain classifier is, in this order: ``domain_weights``; the one ``fit-gate`` wrote beside the gate; the
    cached one the gate records; one trained now on the datalist the gate records (cached for next time).
    ``info`` says which features and weights were used, for ``quality.json``.
    """
    from medgen.metrics.quality_gate import QualityGate

    gate_path = Path(gate_path)
    if not gate_path.is_file():
        raise FileNotFoundError(f"no quality gate at {gate_path}: fit one with `medgen fit-gate DATALIST {gate_path}`")
    gate = QualityGate.load(gate_path)
    meta = dict(gate.meta)
    sidecar = Path(str(gate_path) + ".json")
    if not meta and sidecar.is_file():  # a gate fitted before the gate recorded its own metadata
        meta = json.loads(sidecar.read_text())
    features = meta.get("features", "domain")
    info = {"quality_gate": str(gate_path.resolve()), "threshold": gate.threshold, "features": features,
            "channels": int(meta.get("channels", 1))}
    gate.meta.setdefault("channels", int(meta.get("channels", 1)))
    if features == "inception":
        return gate, InceptionFeatures(), info
    candidates = [domain_weights]
    if meta.get("domain_weights"):
        candidates.append(gate_path.parent / meta["domain_weights"])
    candidates += [gate_weights_file(gate_path), meta.get("domain_weights_cached")]
    weights = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if domain_weights and (weights is None or Path(domain_weights) != weights):
        raise FileNotFoundError(f"no domain classifier at {domain_weights} (--domain-weights)")
    if weights is None:
        datalist = meta.get("datalist")
        if not datalist or not Path(datalist).is_file():
            raise ValueError(f"the quality gate {gate_path} has no domain classifier beside it and records no "
                             "datalist to train one on: pass --domain-weights (the classifier it was fitted with) "
                             "or fit it again with `medgen fit-gate DATALIST GATE`")
        from medgen.metrics.domain_model import ensure_domain_classifier

        print(f"quality filter: training the gate's domain classifier on {datalist} (once; cached)")
        weights = ensure_domain_classifier(datalist, size=int(meta.get("size", 64)), log=True,
                                           channels=int(meta.get("channels", 1)))
    info["domain_weights"] = str(Path(weights).resolve())
    return gate, DomainFeatures(weights), info


def quality_filtered_generate(
    pipeline,
    labels: Sequence[int],
    gate_path: str,
    domain_weights: str | None = None,
    features: str = "domain",
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    first_seed: int = 0,
    max_rounds: int = 20,
    sampler: str | None = None,
    gate_and_extractor: tuple | None = None,
    seed_step: int = 1,
) -> dict:
    """For ``medgen sample --quality-filter``: ``pipeline.generate`` until all ``labels`` pass the gate.

    Every image is made with ``sampler`` (the pipeline's default when None) and ``num_inference_steps``, retries
    included. ``gate_and_extractor`` (from :func:`load_gate`) saves loading them per batch; ``features`` is read
    from the gate itself; seeds run from ``first_seed`` in steps of ``seed_step``. Returns ``images`` ([-1, 1]),
    ``seeds``, ``scores`` (write each as ``"realism_score"`` in samples.jsonl) and ``rejection_rate`` (print it;
    expected under 10%).
    """
    from medgen.metrics.quality_gate import generate_until_pass

    gate, ex = gate_and_extractor or load_gate(gate_path, domain_weights)[:2]
    if isinstance(getattr(pipeline, "in_channels", None), int):  # refuse before any image is generated
        gate.check_channels(pipeline.in_channels, f"the quality gate {gate_path}")
    extra = {"sampler": sampler} if sampler else {}

    def generate(lab: Sequence[int], seeds: Sequence[int]):
        return pipeline.generate(lab, seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 **extra)

    return generate_until_pass(generate, labels, gate, ex, first_seed=first_seed, max_rounds=max_rounds,
                               seed_step=seed_step)
