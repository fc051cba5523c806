"""Downstream utility: does adding synthetic images help a classifier trained on few real ones?

For each real-data size (images per class) a classifier is trained on (a) real only and (b) real + all synthetic
images, and evaluated on the real test set: one-vs-rest AUC per class with a bootstrap 95% interval
(Mann-Whitney U from scipy) and McNemar's exact test (scipy ``binomtest``) between the two arms' predictions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, mannwhitneyu

from medgen.metrics.classifier import predict_proba, train_classifier
from medgen.metrics.errors import require
from medgen.metrics.image_sets import ImageSet


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U / (n1 n0))."""
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float(mannwhitneyu(scores[positive], scores[~positive]).statistic / (n1 * n0))


def auc_with_ci(scores: np.ndarray, positive: np.ndarray, boots: int = 1000, seed: int = 0) -> dict:
    """AUC and its percentile-bootstrap 95% interval over test images."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(boots):
        i = rng.integers(0, len(scores), len(scores))
        v = auc(scores[i], positive[i])
        if not np.isnan(v):
            values.append(v)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return {"auc": auc(scores, positive), "ci_low": float(lo), "ci_high": float(hi)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired correctness: b01 = only B right, b10 = only A right."""
    b01, b10 = int((~correct_a & correct_b).sum()), int((correct_a & ~correct_b).sum())
    p = binomtest(min(b01, b10), b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return {"only_real_plus_synthetic_correct": b01, "only_real_correct": b10, "p_value": float(p)}


def _take_per_class(labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        idx.append(members if n is None or n >= len(members) else rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(idx))


def utility_experiment(
    real_train: ImageSet,
    synthetic: ImageSet,
    real_test: ImageSet,
    sizes: Sequence[int | None] = (50, 200, None),
    epochs: int = 4,
    min_steps: int = 120,
    batch_size: int = 64,
    boots: int = 1000,
    seed: int = 0,
    log: bool = False,
) -> dict:
    """Real-only vs real + synthetic classifiers at several real sizes (``None`` = all); AUC per class on real test."""
    k = len(real_train.classes)
    require("utility experiment", 2 * k, len(real_test), "real test images")
    rng = np.random.default_rng(seed)
    rows, tests = [], []
    for n in sizes:
        idx = _take_per_class(real_train.labels, n, rng)
        arms = {
            "real": (real_train.images[idx], real_train.labels[idx]),
            "real+synthetic": (
                np.concatenate([real_train.images[idx], synthetic.images]),
                np.concatenate([real_train.labels[idx], synthetic.labels]),
            ),
        }
        correct = {}
        for arm, (x, y) in arms.items():
            t0 = time.time()
            ep = max(epochs, int(np.ceil(min_steps / np.ceil(len(x) / batch_size))))
            model = train_classifier(x, y, k, epochs=ep, batch_size=batch_size, seed=seed)
            prob = predict_proba(model, real_test.images)
            correct[arm] = prob.argmax(1) == real_test.labels
            per_class = {
                real_test.classes[c]: auc_with_ci(prob[:, c], real_test.labels == c, boots, seed) for c in range(k)
            }
            rows.append(
                {
                    "real_per_class": n if n is not None else "all",
                    "n_real": int(len(idx)),
                    "arm": arm,
                    "n_train": int(len(x)),
                    "epochs": ep,
                    "accuracy": float(correct[arm].mean()),
                    "auc": per_class,
                    "seconds": round(time.time() - t0, 1),
                }
            )
            if log:
                print(
                    f"utility n={n} {arm}: acc {correct[arm].mean():.3f} "
                    f"auc {[round(v['auc'], 3) for v in per_class.values()]} ({time.time() - t0:.0f}s)"
                )
        tests.append(
            {"real_per_class": n if n is not None else "all", **mcnemar(correct["real"], correct["real+synthetic"])}
        )
    return {"rows": rows, "mcnemar": tests, "test_images": len(real_test), "classes": list(real_test.classes)}
