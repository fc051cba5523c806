"""Downstream utility: does adding synthetic images help a classifier trained on few real ones?

For each real-data size (images per class) a classifier (:mod:`medgen.metrics.classifier`) is trained on (a) real
only and (b) real + synthetic images, for one or several seeds (each seed draws its own real subset), optionally
the synthetic-only classifier fine-tuned (pre-training on synthetic data) on (c) the same real images or (d) the same
real + synthetic images, and one more classifier on synthetic images alone (train on synthetic, test on real). All
are evaluated on the held-out real test set: one-vs-rest AUC per class with a percentile-bootstrap 95% interval over
test images (Mann-Whitney U from scipy; with several seeds the interval is that of the mean over seeds), the paired
AUC gain of (b), (c) and (d) over (a) with its interval, F1 per class (MONAI's confusion-matrix metric), confusion
matrices, and McNemar's exact test (scipy ``binomtest``) between (a)'s predictions and each other arm's per seed,
Bonferroni-corrected across every such test. Written here: the bootstrap of paired and seed-averaged AUCs, the
Bonferroni step and the K x K confusion matrix, which scipy and MONAI lack.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest, mannwhitneyu

from medgen.metrics.classifier import predict_proba, train_classifier
from medgen.metrics.errors import require
from medgen.metrics.image_sets import ImageSet

#: arm names, in table order; TUNED / TUNED_MIX: the synthetic-only classifier fine-tuned on the real subset / on the
#: real subset with the synthetic images of REAL_SYN
REAL, REAL_SYN, SYN = "real", "real+synthetic", "synthetic only"
TUNED, TUNED_MIX = "synthetic, then real", "synthetic, then real+synthetic"
#: peak learning rate of the fine-tuned arms: a quarter of :func:`~medgen.metrics.classifier.train_classifier`'s
#: 2e-3 from scratch (a 2e-3 fine-tune kept less of what the synthetic images taught: docs/performance.md)
FINE_TUNE_LR = 5e-4
#: the arms compared with real only, and the result keys of their AUC gains and McNemar tests
COMPARED = {REAL_SYN: ("auc_gain", "mcnemar"), TUNED: ("auc_gain_fine_tuned", "mcnemar_fine_tuned"),
            TUNED_MIX: ("auc_gain_fine_tuned_mixed", "mcnemar_fine_tuned_mixed")}
#: the arms that start from each seed's synthetic-only classifier
FINE_TUNED = (TUNED, TUNED_MIX)


def comparisons(ut: dict) -> tuple[dict, dict]:
    """A utility result's McNemar tests and AUC gains, each keyed by (arm, real images per class), for every arm
    compared with real only (results written before the fine-tuned arms existed have real + synthetic alone)."""
    tests = {(arm, t["real_per_class"]): t for arm, (_, key) in COMPARED.items() for t in ut.get(key, [])}
    gains = {(arm, g["real_per_class"]): g for arm, (key, _) in COMPARED.items() for g in ut.get(key, [])}
    return tests, gains


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U / (n1 n0))."""
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float(mannwhitneyu(scores[positive], scores[~positive]).statistic / (n1 * n0))


def _mean_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC averaged over the rows of ``scores`` (R x N: one row per classifier seed)."""
    return float(np.mean([auc(row, positive) for row in scores]))


def auc_with_ci(scores: np.ndarray, positive: np.ndarray, boots: int = 1000, seed: int = 0) -> dict:
    """AUC and its percentile-bootstrap 95% interval over test images.

    ``scores`` is N (one classifier) or R x N (R classifiers, e.g. seeds, scored on the same N test images): then the
    AUC is the mean over the R, and each bootstrap draw resamples the test images for all R alike."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(positive, dtype=bool)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(boots):
        i = rng.integers(0, s.shape[1], s.shape[1])
        v = _mean_auc(s[:, i], positive[i])
        if not np.isnan(v):
            values.append(v)
    lo, hi = np.percentile(values, [2.5, 97.5]) if values else (float("nan"), float("nan"))
    return {"auc": _mean_auc(s, positive), "ci_low": float(lo), "ci_high": float(hi)}


def auc_gain_with_ci(
    scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray, boots: int = 1000, seed: int = 0
) -> dict:
    """AUC(B) - AUC(A) on the same test images (each N or R x N) with a paired percentile-bootstrap 95% interval."""
    a, b = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (scores_a, scores_b))
    positive = np.asarray(positive, dtype=bool)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(boots):
        i = rng.integers(0, a.shape[1], a.shape[1])
        v = _mean_auc(b[:, i], positive[i]) - _mean_auc(a[:, i], positive[i])
        if not np.isnan(v):
            values.append(v)
    lo, hi = np.percentile(values, [2.5, 97.5]) if values else (float("nan"), float("nan"))
    return {"gain": _mean_auc(b, positive) - _mean_auc(a, positive), "ci_low": float(lo), "ci_high": float(hi)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired correctness: b01 = only B right, b10 = only A right."""
    b01, b10 = int((~correct_a & correct_b).sum()), int((correct_a & ~correct_b).sum())
    p = binomtest(min(b01, b10), b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return {"only_real_plus_synthetic_correct": b01, "only_real_correct": b10, "p_value": float(p)}


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values: each times the number of tests, capped at 1."""
    m = len(p_values)
    return [min(1.0, float(p) * m) for p in p_values]


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts, rows = true class, columns = predicted class."""
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def f1_per_class(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[float]:
    """One-vs-rest F1 of each class (MONAI ``get_confusion_matrix`` + ``compute_confusion_matrix_metric``)."""
    from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

    eye = torch.eye(num_classes)
    counts = get_confusion_matrix(
        eye[torch.as_tensor(np.asarray(predicted, dtype=np.int64))],
        eye[torch.as_tensor(np.asarray(truth, dtype=np.int64))],
    ).sum(0)
    f1 = compute_confusion_matrix_metric("f1 score", counts)
    return [float(v) if np.isfinite(float(v)) else 0.0 for v in f1]


def read_utility_json(path: str | os.PathLike, required: bool = True) -> dict | None:
    """The utility result in a JSON written by ``python -m benchmarks.utility`` (its ``utility`` key) or by
    :func:`utility_experiment`; ``None`` when the file is absent and not ``required``."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"no utility JSON at {path}: give one written by python -m benchmarks.utility")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read utility JSON {path}: {e}") from None
    ut = data.get("utility", data) if isinstance(data, dict) else None
    if not isinstance(ut, dict) or "rows" not in ut or "classes" not in ut:
        raise ValueError(f"{path} is not a utility result (no 'rows' and 'classes'): give the JSON that "
                         "python -m benchmarks.utility writes")
    return ut


def _take_per_class(labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        idx.append(members if n is None or n >= len(members) else rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(idx))


def _take_synthetic(labels: np.ndarray, n_real: dict[int, int], per_class: int | str | None,
                    rng: np.random.Generator) -> np.ndarray:
    """Synthetic images to add: all (``None``), at most ``per_class`` per class (int), or as many as the real ones
    of that class (``"match"``), each capped by what the set holds."""
    if per_class is None:
        return np.arange(len(labels))
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = n_real.get(int(c), 0) if per_class == "match" else int(per_class)
        idx.append(members if n >= len(members) else rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(idx)) if idx else np.arange(0)


def _size_name(n: int | None) -> int | str:
    return n if n is not None else "all"


def utility_experiment(
    real_train: ImageSet,
    synthetic: ImageSet,
    real_test: ImageSet,
    sizes: Sequence[int | None] = (25, 50, 200, None),
    epochs: int = 4,
    min_steps: int = 120,
    batch_size: int = 64,
    boots: int = 1000,
    seed: int = 0,
    log: bool = False,
    seeds: Sequence[int] | None = None,
    synthetic_per_class: int | str | None = None,
    steps: int | None = None,
    synthetic_only: bool = True,
    fine_tune_lr: float | None = None,
) -> dict:
    """Real-only vs real + synthetic classifiers at several real sizes per class (``None`` = all), and a
    synthetic-only one; every score on ``real_test``.

    Args:
        seeds: classifier seeds (default ``[seed]``); seed s draws the real (and synthetic) subset and initialises
            and shuffles the classifier, so the spread over seeds includes which real images were drawn.
        synthetic_per_class: synthetic images added per class: ``None`` all, an int at most that many, ``"match"``
            as many as the real ones of the class.
        steps: optimizer steps per classifier, the same for every arm (equal compute); ``None``: at least
            ``epochs`` epochs and ``min_steps`` steps.
        synthetic_only: also train on synthetic images alone (all of them) and test on real.
        fine_tune_lr: also fine-tune each seed's synthetic-only classifier for ``steps`` steps peaking at this
            learning rate, on that seed's real subset (arm ``"synthetic, then real"``) and on the real + synthetic
            set of the real + synthetic arm (``"synthetic, then real+synthetic"``); ``None``: not.
    """
    k = len(real_train.classes)
    require("utility experiment", 2 * k, len(real_test), "real test images")
    seeds = list(seeds) if seeds else [seed]
    truth = real_test.labels
    counts = np.bincount(real_train.labels, minlength=k)
    minority = real_train.classes[int(np.argmin(counts))]
    rows: list[dict] = []
    compared = [REAL_SYN, *(FINE_TUNED if fine_tune_lr else ())]
    tests: dict[str, list[dict]] = {arm: [] for arm in compared}
    gains: dict[str, list[dict]] = {arm: [] for arm in compared}

    def fit(x: np.ndarray, y: np.ndarray, s: int, **kw: Any) -> tuple[np.ndarray, int, torch.nn.Module]:
        per_epoch = int(np.ceil(len(x) / batch_size))
        if steps:
            ep, cap = int(np.ceil(steps / per_epoch)), steps
        else:
            ep, cap = max(epochs, int(np.ceil(min_steps / per_epoch))), None
        model = train_classifier(x, y, k, epochs=ep, batch_size=batch_size, seed=s, max_steps=cap, **kw)
        return predict_proba(model, real_test.images), (cap or ep * per_epoch), model

    def summarise(size: int | str, arm: str, probs: list[np.ndarray], info: dict, seconds: float) -> dict:
        stack = np.stack(probs)  # R x N x K
        preds = stack.argmax(2)
        cms = [confusion_matrix(truth, p, k) for p in preds]
        f1s = [f1_per_class(truth, p, k) for p in preds]
        per_class = {}
        for c, name in enumerate(real_test.classes):
            est = auc_with_ci(stack[:, :, c], truth == c, boots, seeds[0])
            per_seed = [auc(stack[r, :, c], truth == c) for r in range(len(probs))]
            per_class[name] = {**est, "per_seed": per_seed, "sd_over_seeds": float(np.std(per_seed))}
        row = {
            "real_per_class": size,
            "arm": arm,
            **info,
            "seeds": seeds,
            "accuracy": float(np.mean([(p == truth).mean() for p in preds])),
            "auc": per_class,
            "f1": {name: float(np.mean([f[c] for f in f1s])) for c, name in enumerate(real_test.classes)},
            "confusion_matrix": np.sum(cms, axis=0).tolist(),
            "confusion_matrix_per_seed": [cm.tolist() for cm in cms],
            "seconds": round(seconds, 1),
        }
        if log:
            aucs = ", ".join(f"{n} {v['auc']:.3f}" for n, v in per_class.items())
            print(f"utility {size} {arm}: acc {row['accuracy']:.3f}, AUC {aucs} ({row['seconds']:.0f} s)", flush=True)
        return row

    # synthetic only, one classifier per seed: its own row, and the start of the fine-tuned arms
    pretrained: dict[int, torch.nn.Module] = {}
    probs_syn, t_syn, syn_steps = [], time.time(), 0
    if synthetic_only or fine_tune_lr:
        for s in seeds:
            prob, syn_steps, pretrained[s] = fit(synthetic.images, synthetic.labels, s)
            probs_syn.append(prob)
        t_syn = time.time() - t_syn
    for n in sizes:
        name = _size_name(n)
        probs: dict[str, list[np.ndarray]] = {REAL: [], **{arm: [] for arm in compared}}
        info: dict[str, dict] = {}
        t0 = dict.fromkeys(probs, 0.0)
        for s in seeds:
            rng = np.random.default_rng(s)
            idx = _take_per_class(real_train.labels, n, rng)
            n_real = {int(c): int((real_train.labels[idx] == c).sum()) for c in range(k)}
            syn = _take_synthetic(synthetic.labels, n_real, synthetic_per_class, rng)
            arms = {
                REAL: (real_train.images[idx], real_train.labels[idx]),
                REAL_SYN: (
                    np.concatenate([real_train.images[idx], synthetic.images[syn]]),
                    np.concatenate([real_train.labels[idx], synthetic.labels[syn]]),
                ),
            }
            if fine_tune_lr:
                arms[TUNED], arms[TUNED_MIX] = arms[REAL], arms[REAL_SYN]
            for arm, (x, y) in arms.items():
                start = time.time()
                tuning = {"init": pretrained[s], "lr": fine_tune_lr} if arm in FINE_TUNED else {}
                prob, used, _ = fit(x, y, s, **tuning)
                t0[arm] += time.time() - start
                probs[arm].append(prob)
                info[arm] = {"n_real": int(len(idx)), "n_synthetic": int(len(syn)) if arm == REAL_SYN else 0,
                             "n_train": int(len(x)), "steps": int(used), "batch_size": batch_size}
                if arm in FINE_TUNED:  # n_synthetic: those pre-trained on (all); the fine-tuning set is n_train
                    info[arm].update(n_synthetic=int(len(synthetic)), pretrain_steps=int(syn_steps),
                                     lr=float(fine_tune_lr))
        for arm in probs:
            rows.append(summarise(name, arm, probs[arm], info[arm], t0[arm]))
        for arm in compared:
            per_seed = [mcnemar(a.argmax(1) == truth, b.argmax(1) == truth) for a, b in zip(probs[REAL], probs[arm])]
            tests[arm].append({"real_per_class": name, **per_seed[0], "per_seed": per_seed})
            gains[arm].append({"real_per_class": name, **{
                c: auc_gain_with_ci(np.stack(probs[REAL])[:, :, i], np.stack(probs[arm])[:, :, i], truth == i, boots,
                                    seeds[0])
                for i, c in enumerate(real_test.classes)
            }})
    # Bonferroni across every test made (sizes x arms compared with real only), for each seed's family of tests
    family = [t for arm in compared for t in tests[arm]]
    for r in range(len(seeds)):
        adjusted = bonferroni([t["per_seed"][r]["p_value"] for t in family])
        for t, p in zip(family, adjusted):
            t["per_seed"][r]["p_bonferroni"] = p
    for t in family:
        t["p_bonferroni"] = t["per_seed"][0]["p_bonferroni"]
    if synthetic_only:
        info_syn = {"n_real": 0, "n_synthetic": int(len(synthetic)), "n_train": int(len(synthetic)),
                    "steps": int(syn_steps), "batch_size": batch_size}
        rows.append(summarise(0, SYN, probs_syn, info_syn, t_syn))
    return {
        "rows": rows,
        **{key: value for arm in compared
           for key, value in zip(COMPARED[arm], (gains[arm], tests[arm]))},
        "fine_tune_lr": fine_tune_lr,
        "bonferroni_tests": len(family),
        "test_images": len(real_test),
        "test_per_class": np.bincount(truth, minlength=k).tolist(),
        "train_per_class": counts.tolist(),
        "classes": list(real_test.classes),
        "minority_class": minority,
        "seeds": seeds,
        "synthetic_per_class": synthetic_per_class,
        "synthetic_available_per_class": np.bincount(synthetic.labels, minlength=k).tolist(),
        "steps_per_classifier": steps,
    }
