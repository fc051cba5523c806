"""Evaluate a samples folder against a real datalist: metrics.json (+ report.html via :mod:`medgen.report`).

Roles of the real splits: the *reference* (training split, capped per class) is what generated images are compared
with (FID/KID/PRDC, histograms, spectra, realism); the *held-out* split (test, else validation) gives the
memorisation-audit reference distances, the real-vs-real floor and the utility test set. The caps and the
``protocol`` section (FID / floor per class at equal N) are the quality protocol's (:mod:`medgen.metrics.protocol`),
the same definition ``python -m benchmarks.quality`` uses. Real images are loaded in the samples' channels (RGB for
a colour model, grey for a grey one), so every metric compares like with like and colour is kept throughout.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medgen.fileio import write_text_atomic
from medgen.folder_lock import FolderInUseError, claim_folder
from medgen.metrics.distribution import fid, kid, prdc
from medgen.metrics.diversity import ms_ssim_diversity
from medgen.metrics.error_analysis import mode_collapse, realism_ranking, spectrum_comparison
from medgen.metrics.errors import TooFewImagesError
from medgen.metrics.features import FeatureExtractor, extract_features
from medgen.metrics.histograms import histogram_tests
from medgen.metrics.image_sets import (
    ImageSet,
    load_datalist_split,
    load_samples_dir,
    preparation_of,
    read_datalist,
)
from medgen.metrics.memorisation import EVALUATE_PHI_NOTE, memorisation_audit
from medgen.metrics.protocol import HELDOUT_CAP, REFERENCE_CAP, protocol_counts, score_protocol
from medgen.metrics.similarity import real_vs_synthetic_table
from medgen.networks.weights_meta import samples_meta


def _guard(fn, *args, **kw) -> dict:
    """Run a metric; a too-small set becomes ``{"error": ...}`` in metrics.json instead of aborting the evaluation."""
    try:
        return fn(*args, **kw)
    except TooFewImagesError as e:
        return {"error": str(e)}


def _feature_metrics(ref: np.ndarray, gen: np.ndarray, kid_subsets: int, k: int) -> dict:
    return {
        "fid": _guard(lambda: {"value": fid(ref, gen)}),
        "kid": _guard(kid, ref, gen, subsets=kid_subsets),
        "prdc": _guard(prdc, ref, gen, k=k),
    }


def score_sets(
    reference: ImageSet,
    generated: ImageSet,
    extractors: dict[str, FeatureExtractor],
    kid_subsets: int = 50,
    k: int = 5,
    num_pairs: int = 200,
    feats: dict | None = None,
) -> dict:
    """Per-class and overall FID/KID/PRDC (per extractor), MS-SSIM diversity and histogram tests of ``generated``."""
    feats = feats if feats is not None else {}
    for name, ex in extractors.items():
        feats.setdefault(name, (extract_features(ex, reference), extract_features(ex, generated)))
    out: dict = {}
    groups: list[tuple[str, int | None]] = [("overall", None)] + [(n, c) for c, n in enumerate(reference.classes)]
    for key, c in groups:
        r_mask = np.ones(len(reference), bool) if c is None else reference.labels == c
        g_mask = np.ones(len(generated), bool) if c is None else generated.labels == c
        entry: dict = {"n_real": int(r_mask.sum()), "n_generated": int(g_mask.sum())}
        for name, (rf, gf) in feats.items():
            entry[name] = _feature_metrics(rf[r_mask], gf[g_mask], kid_subsets, k)
        entry["histogram"] = _guard(histogram_tests, reference.images[r_mask], generated.images[g_mask])
        if c is not None:
            entry["ms_ssim_generated"] = _guard(ms_ssim_diversity, generated.images[g_mask], num_pairs)
            entry["ms_ssim_real"] = _guard(ms_ssim_diversity, reference.images[r_mask], num_pairs)
        out[key] = entry
    return out


class EvaluationFolderError(ValueError):
    """The output folder holds another evaluation, or parts of an earlier one this run would leave beside its own."""


def _same_path(recorded: object, given: str | os.PathLike) -> bool:
    return isinstance(recorded, str) and os.path.realpath(recorded) == os.path.realpath(given)


def check_evaluation_folder(out_dir: str | os.PathLike, samples_dir: str | os.PathLike, datalist: str | os.PathLike,
                            report: bool = True, judge: bool = True) -> None:
    """Refuse, before any work, an evaluation that would replace another one's results or mix with an earlier one's.

    An evaluation folder holds one evaluation: ``metrics.json``, ``report.html`` and ``judge/``. Evaluating the same
    samples against the same datalist again replaces it; evaluating other samples or against another datalist would
    lose its figures, and a part this run does not write (``--no-report``, ``--no-judge``) would stay beside figures it
    does not show (an unredacted report beside redacted metrics, say)."""
    out = Path(out_dir)
    hint = "write to another folder (--out DIR, --output_dir DIR)"
    metrics = out / "metrics.json"
    if metrics.is_file():
        try:
            earlier = json.loads(metrics.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise EvaluationFolderError(f"{metrics} is no evaluation's metrics ({err}) and would be replaced; "
                                        f"{hint}") from None
        if not isinstance(earlier, dict) or "samples_dir" not in earlier or "datalist" not in earlier:
            raise EvaluationFolderError(f"{metrics} is no evaluation's metrics (no samples_dir and datalist) and would "
                                        f"be replaced; {hint}")
        if not (_same_path(earlier["samples_dir"], samples_dir) and _same_path(earlier["datalist"], datalist)):
            raise EvaluationFolderError(
                f"{out} holds the evaluation of {earlier['samples_dir']} against {earlier['datalist']}: evaluating "
                f"{samples_dir} against {datalist} would replace its figures; {hint}")
    for part, written, flag in (("report.html", report, "--no-report"), ("judge", judge, "--no-judge")):
        if not written and (out / part).exists():
            raise EvaluationFolderError(
                f"{out / part} is an earlier evaluation's and this one ({flag}) does not write it again: it would stay "
                f"beside figures it does not show; remove it, or {hint}")


def heldout_split(datalist: dict) -> str:
    """The held-out split (test, else validation), as the quality protocol defines it."""
    from medgen.metrics.protocol import heldout_split as protocol_split

    return protocol_split(datalist)


def evaluate(
    samples_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    extractors: dict[str, FeatureExtractor],
    size: int = 64,
    max_real_per_class: int | None = None,
    audit_extractor: str | None = None,
    utility_sizes: Sequence[int | None] | None = None,
    utility_epochs: int = 4,
    utility_kwargs: dict | None = None,
    num_pairs: int = 200,
    kid_subsets: int = 50,
    report: bool = True,
    seed: int = 0,
    utility_json: str | os.PathLike | None = None,
    redact_paths: bool = False,
    judge: bool = True,
    judge_classifier: str | os.PathLike | None = None,
    classifier_size: int | None = None,
) -> dict:
    """Compute every metric of issue 3 for ``samples_dir``, write ``metrics.json`` (and ``report.html``).

    The memorisation section names training files and the report shows real training pixels (PHI);
    ``redact_paths`` names them by their place in the datalist and leaves real pixels out of the report.
    ``judge``: the classifier-judged section (:mod:`medgen.metrics.judge`; ``judge_classifier`` reuses one), trained
    and run at ``classifier_size`` pixels (default ``size``; a smaller one keeps 256² evaluations short on a CPU).

    ``out_dir`` is this process's while it runs: a second evaluation into it would mix two runs' metrics, report and
    judge, so it raises :class:`~medgen.folder_lock.FolderInUseError` before any work; one that holds another
    evaluation raises :class:`EvaluationFolderError` (:func:`check_evaluation_folder`)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    with claim_folder(out_dir, "evaluation", "write to another folder (OUT_DIR, --output_dir DIR)"):
        check_evaluation_folder(out_dir, samples_dir, datalist, report=report, judge=judge)
        out_dir.mkdir(parents=True, exist_ok=True)
        data = read_datalist(datalist)
        generated = load_samples_dir(samples_dir, size=size, classes=data["classes"])
        prep = preparation_of(samples_meta(samples_dir))  # real images prepared as the weights' training prepared them
        prep["channels"] = generated.channels  # and in the samples' colour: grey or RGB
        ref_cap, held_cap = (REFERENCE_CAP, HELDOUT_CAP) if max_real_per_class is None else (max_real_per_class,) * 2
        reference = load_datalist_split(datalist, "training", size=size, per_class=ref_cap, seed=seed, **prep)
        heldout = load_datalist_split(datalist, heldout_split(data), size=size, per_class=held_cap, seed=seed, **prep)
        feats = {n: (extract_features(e, reference), extract_features(e, generated)) for n, e in extractors.items()}
        held_feats = {n: extract_features(e, heldout) for n, e in extractors.items()}
        metrics: dict = {
            "samples_dir": str(samples_dir),
            "datalist": str(datalist),
            "image_size": size,
            "channels": generated.channels,
            "classes": data["classes"],
            "extractors": {n: e.name for n, e in extractors.items()},
            "n_reference": len(reference),
            "n_heldout": len(heldout),
            "n_generated": len(generated),
            "real_preparation": prep,
            "real_skipped": dict(reference.skipped + heldout.skipped),  # items that failed to load, by reason
            "generated_skipped": dict(generated.skipped),  # samples deleted from the folder or damaged, by reason
        }
        if extractors:
            p_name = "inception" if "inception" in extractors else next(iter(extractors))
            metrics["protocol"] = score_protocol(
                data["classes"], (feats[p_name][0], reference.labels), (feats[p_name][1], generated.labels),
                (held_feats[p_name], heldout.labels), seed=seed, kid_subsets=kid_subsets,
            )
            metrics["protocol"]["features"] = extractors[p_name].name
            try:  # what a full protocol run would generate per class (the held-out counts, capped)
                metrics["protocol"]["protocol_counts"] = protocol_counts(data)
            except ValueError as err:
                metrics["protocol"]["protocol_counts"] = {"error": str(err)}
        metrics["generated"] = score_sets(reference, generated, extractors, kid_subsets, num_pairs=num_pairs,
                                          feats=feats)
        floor_feats = {n: (feats[n][0], held_feats[n]) for n in extractors}
        metrics["floor_real_heldout"] = score_sets(
            reference, heldout, extractors, kid_subsets, num_pairs=num_pairs, feats=floor_feats
        )
        metrics["mse_ssim_table"] = real_vs_synthetic_table(
            heldout.images, heldout.labels, generated.images, generated.labels, data["classes"], num_pairs=num_pairs
        )
        a_name = audit_extractor or next(iter(extractors), None)
        audit = memorisation_audit(
            generated.images,
            reference.images,
            heldout.images,
            *((feats[a_name][1], feats[a_name][0], held_feats[a_name]) if a_name else (None, None, None)),
        )
        ref_ids = reference.ids
        if redact_paths:
            from medgen.metrics.memorisation import redacted_ids

            ref_ids = redacted_ids(reference.ids, data, os.path.dirname(os.path.abspath(datalist)))
        metrics["memorisation"] = audit.summary(generated.ids, ref_ids)
        metrics["memorisation"]["feature_extractor"] = a_name
        metrics["memorisation"]["redacted_paths"] = bool(redact_paths)
        metrics["memorisation"]["phi_note"] = EVALUATE_PHI_NOTE
        analysis: dict = {"spectrum": spectrum_comparison(reference.images, generated.images)}
        if a_name:
            rank = realism_ranking(feats[a_name][1], feats[a_name][0])
            analysis["realism"] = {
                "extractor": a_name,
                "most": rank["most"],
                "least": rank["least"],
                "most_files": [generated.ids[i] for i in rank["most"]],
                "least_files": [generated.ids[i] for i in rank["least"]],
                "median_score": float(np.median(rank["scores"])),
            }
            analysis["mode_collapse"] = _guard(mode_collapse, feats[a_name][1], feats[a_name][0], seed=seed)
        metrics["error_analysis"] = analysis
        if utility_sizes:
            from medgen.metrics.utility import FINE_TUNE_LR, utility_experiment

            train_all = load_datalist_split(datalist, "training", size=size, **prep)
            kwargs = {"fine_tune_lr": FINE_TUNE_LR, **(utility_kwargs or {})}  # the benchmark's arms
            metrics["utility"] = utility_experiment(
                train_all, generated, heldout, utility_sizes, epochs=utility_epochs, seed=seed, **kwargs
            )
        else:
            from medgen.metrics.utility import read_utility_json

            found = read_utility_json(utility_json or Path(samples_dir) / "utility.json", required=bool(utility_json))
            if found:
                metrics["utility"] = found
        if judge:  # classifier-judged section: judge/ holds judge.json, the PNGs and the classifier
            from medgen.metrics.judge import evaluation_judge

            metrics["judge"] = evaluation_judge(samples_dir, datalist, out_dir / "judge", classifier=judge_classifier,
                                                size=classifier_size or size, channels=generated.channels, seed=seed,
                                                log=True)
        metrics["seconds"] = round(time.time() - t0, 1)
        write_text_atomic(json.dumps(metrics, indent=2), out_dir / "metrics.json")
        if report:
            from medgen.report.html import write_report

            write_report(
                out_dir / "report.html", metrics, reference=reference, generated=generated, heldout=heldout,
                audit=audit, redact=redact_paths,
            )
        return metrics


class Evaluation:
    """Bundle component: knobs in ``__init__`` (those of :func:`evaluate`), the run in ``__call__``."""

    def __init__(
        self, samples_dir: str, datalist: str, output_dir: str, extractors: dict[str, FeatureExtractor], **kwargs
    ):
        self.args, self.kwargs = (samples_dir, datalist, output_dir, extractors), kwargs

    def __call__(self) -> dict:
        from medgen.config import fail

        try:
            return evaluate(*self.args, **self.kwargs)
        except (FolderInUseError, EvaluationFolderError) as err:
            fail(f"cannot evaluate: {err}")
            raise AssertionError from err  # unreachable: fail() raises
