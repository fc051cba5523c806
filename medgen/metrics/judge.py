"""Classifier-judged evaluation: does a classifier trained on real images label the synthetic ones as it labels real
ones?

A classifier (:mod:`medgen.metrics.classifier`, a MONAI ResNet) is trained with a recorded seed on the real training
split only, at the samples' image size and channels (grey or RGB), and saved with its sha256 so a later run can reuse
it. It then labels the real held-out images (test split, else validation) and the synthetic ones (a samples folder
whose ``samples.jsonl`` gives each file's class). Reported: accuracy, per-class precision / recall / F1 and confusion
matrix of each set, the accuracy gap (real - synthetic, in points), a chi-square test of the predicted-label counts
synthetic vs real (``scipy.stats.chi2_contingency`` per intended class; the per-class statistics and degrees of
freedom are summed into one stratified test, so a different class mix of the two sets does not count as a
difference; the pooled 2 x K table is reported too), the KL divergence and the two-sample Kolmogorov-Smirnov test
(``scipy.stats.ks_2samp``) of the classifier's confidence in the intended class, per class, and the reliability
(calibration) of its top-class confidence with the expected calibration error. Written here: reading the samples by
class name, the stratified sum, the histogram KL and the reliability bins, which scipy and MONAI lack.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import chi2, chi2_contingency, entropy, ks_2samp

from medgen.fileio import write_text_atomic
from medgen.metrics.classifier import load_classifier, predict_proba, save_classifier, train_classifier
from medgen.metrics.errors import ImageSetError, require
from medgen.metrics.image_sets import (
    ImageSet,
    left_out_text,
    load_datalist_split,
    load_image,
    preparation_of,
    read_datalist,
    read_samples,
)
from medgen.metrics.utility import confusion_matrix
from medgen.networks.weights_meta import sha256_of

#: file names inside the judge's output folder
JUDGE_JSON, CLASSIFIER_FILE = "judge.json", "judge_classifier.pt"
CONFUSION_REAL, CONFUSION_SYNTHETIC, CALIBRATION_PNG, CONFIDENCE_PNG = (
    "confusion_real.png", "confusion_synthetic.png", "calibration.png", "confidence.png")
#: bins of the confidence histograms (KL) and of the reliability diagram
BINS = 10


# ----------------------------------------------------------------------------------------------------- the image sets
def sample_geometry(samples_dir: str | os.PathLike) -> tuple[int, int]:
    """``(size, channels)`` of a samples folder, read from its first readable image (RGB / RGBA / colour palette:
    3); images deleted from the folder or damaged are passed over, as the judge leaves them out."""
    error = None
    for record in read_sample_records(samples_dir):
        path = Path(samples_dir) / record["file"]
        try:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                    return int(im.size[0]), 3
                rgb = np.asarray(im.convert("RGB"))  # a palette or other mode: colour when the channels differ
                return int(im.size[0]), 1 if (rgb == rgb[..., :1]).all() else 3
        except OSError as e:
            error = error or f"cannot read sample {path}: {e}"
    raise ImageSetError(f"{error} (nor any other sample of {samples_dir})")


def read_sample_records(samples_dir: str | os.PathLike) -> list[dict]:
    """The records of ``samples.jsonl`` (one per file, with ``file`` and ``class``); one-line errors naming it."""
    index = Path(samples_dir) / "samples.jsonl"
    if not Path(samples_dir).is_dir():
        raise ImageSetError(f"samples folder not found: {samples_dir}")
    if not index.is_file():
        raise ImageSetError(f"{samples_dir} has no samples.jsonl: give a folder written by `medgen sample` (it names "
                            "each file's class)")
    records = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImageSetError(f"{index} line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "file" not in rec or ("class" not in rec and "label" not in rec):
            raise ImageSetError(f"{index} line {n}: a record needs 'file' and 'class' (as `medgen sample` writes)")
        records.append(rec)
    if not records:
        raise ImageSetError(f"{index} lists no samples")
    from medgen.diffusion.sample_run import latest_records

    return latest_records(records)


def load_samples(
    samples_dir: str | os.PathLike, classes: Sequence[str], size: int, channels: int
) -> tuple[np.ndarray, np.ndarray, list[str], Counter]:
    """Synthetic images (N x C x size x size in [0, 1]), their intended labels (indices into the datalist's
    ``classes``, matched by class name), files, and the samples left out by reason (deleted from the folder, or
    damaged: :func:`~medgen.metrics.image_sets.read_samples`). A class the datalist lacks is an error naming it."""
    index = Path(samples_dir) / "samples.jsonl"
    labels, files = [], []
    for rec in read_sample_records(samples_dir):
        name = str(rec.get("class", rec.get("label")))
        if name not in classes:
            raise ImageSetError(f"{index}: class {name!r} (file {rec['file']}) is not one of the datalist's classes "
                                f"{list(classes)}: give the datalist the samples' model was trained on")
        labels.append(list(classes).index(name))
        files.append(str(Path(samples_dir) / rec["file"]))
    kept, images, skipped, _ = read_samples(files, lambda p: load_image(p, size, channels))
    if not images:
        raise ImageSetError(f"{index}: none of its {len(files)} samples can be read ({left_out_text(skipped)})")
    return (np.stack(images), np.asarray([labels[i] for i in kept], dtype=np.int64), [files[i] for i in kept],
            skipped)


def load_real(
    datalist: str | os.PathLike,
    split: str,
    size: int,
    channels: int,
    per_class: int | None = None,
    seed: int = 0,
    **prep,
) -> ImageSet:
    """Real images of one split as training prepares them, at ``channels`` (:func:`~medgen.metrics.image_sets.
    load_datalist_split`); ``per_class`` draws at most that many per class (``seed``). An empty split is an error
    naming the datalist."""
    data = read_datalist(datalist)
    if not data.get(split):
        raise ImageSetError(f"{datalist}: split {split!r} is empty: the judge needs real images there "
                            f"(splits present: {sorted(k for k in data if k != 'classes' and data[k])})")
    prep = {**prep, "channels": channels}
    return load_datalist_split(datalist, split, size=size, per_class=per_class, seed=seed, **prep)


# -------------------------------------------------------------------------------------------------------- the figures
def classification_scores(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision / recall (= the class's accuracy) / F1 and the confusion matrix (rows = true
    class); ``None`` where a class has no image (recall) or no prediction (precision)."""
    k = len(classes)
    cm = confusion_matrix(truth, predicted, k)
    tp, n_true, n_pred = np.diag(cm), cm.sum(1), cm.sum(0)
    per_class = {}
    for c, name in enumerate(classes):
        p = float(tp[c] / n_pred[c]) if n_pred[c] else None
        r = float(tp[c] / n_true[c]) if n_true[c] else None
        f1 = (2 * p * r / (p + r) if p + r else 0.0) if p is not None and r is not None else None
        per_class[name] = {"n": int(n_true[c]), "accuracy": r, "precision": p, "recall": r, "f1": f1}
    return {"n": int(len(truth)), "accuracy": float((truth == predicted).mean()), "per_class": per_class,
            "predicted_counts": n_pred.tolist(), "confusion_matrix": cm.tolist()}


def chi_square_predicted(
    real_truth: np.ndarray, real_pred: np.ndarray, syn_truth: np.ndarray, syn_pred: np.ndarray, classes: Sequence[str]
) -> dict:
    """Chi-square tests of predicted-label counts, synthetic vs real: per intended class (a 2 x K table, columns
    that are zero in both rows dropped), their stratified sum, and the pooled 2 x K table of all images."""
    k = len(classes)

    def test(a: np.ndarray, b: np.ndarray) -> dict:
        table = np.stack([np.bincount(a, minlength=k), np.bincount(b, minlength=k)])
        table = table[:, table.sum(0) > 0]
        out = {"real_counts": np.bincount(a, minlength=k).tolist(), "synthetic_counts": np.bincount(b, minlength=k)
               .tolist()}
        if table.shape[1] < 2 or (table.sum(1) == 0).any():
            return {**out, "statistic": 0.0, "dof": 0, "p_value": 1.0}
        res = chi2_contingency(table, correction=False)
        return {**out, "statistic": float(res.statistic), "dof": int(res.dof), "p_value": float(res.pvalue)}

    per_class = {}
    for c, name in enumerate(classes):
        r, s = real_truth == c, syn_truth == c
        if r.any() and s.any():
            per_class[name] = test(real_pred[r], syn_pred[s])
    stat = float(sum(v["statistic"] for v in per_class.values()))
    dof = int(sum(v["dof"] for v in per_class.values()))
    return {
        "statistic": stat, "dof": dof, "p_value": float(chi2.sf(stat, dof)) if dof else 1.0,
        "per_class": per_class, "pooled": test(real_pred, syn_pred),
    }


def histogram_kl(p_samples: np.ndarray, q_samples: np.ndarray, bins: int = BINS) -> float:
    """KL(P || Q) of two samples in [0, 1] over ``bins`` equal bins, each count + 0.5 (so an empty bin is finite)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    p = np.histogram(p_samples, edges)[0] + 0.5
    q = np.histogram(q_samples, edges)[0] + 0.5
    return float(entropy(p / p.sum(), q / q.sum()))


def confidence_tests(
    real_probs: np.ndarray, real_truth: np.ndarray, syn_probs: np.ndarray, syn_truth: np.ndarray,
    classes: Sequence[str],
) -> dict:
    """Per class (and all classes together): the classifier's confidence in the intended class, real vs synthetic:
    means, KL(synthetic || real) over :data:`BINS` bins and the two-sample Kolmogorov-Smirnov test."""
    real_conf = real_probs[np.arange(len(real_truth)), real_truth]
    syn_conf = syn_probs[np.arange(len(syn_truth)), syn_truth]
    out = {}
    for key, c in [("overall", None)] + [(name, c) for c, name in enumerate(classes)]:
        r = real_conf if c is None else real_conf[real_truth == c]
        s = syn_conf if c is None else syn_conf[syn_truth == c]
        if not len(r) or not len(s):
            continue
        ks = ks_2samp(s, r)
        out[key] = {"n_real": int(len(r)), "n_synthetic": int(len(s)), "mean_real": float(r.mean()),
                    "mean_synthetic": float(s.mean()), "kl_synthetic_real": histogram_kl(s, r),
                    "ks_statistic": float(ks.statistic), "ks_p_value": float(ks.pvalue)}
    return out


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> dict:
    """Reliability of the top-class confidence: per bin its mean confidence, accuracy and count; and the expected
    calibration error (count-weighted mean |accuracy - confidence|)."""
    conf, correct = probs.max(1), probs.argmax(1) == truth
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append({"bin": b, "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean()),
                         "n": int(m.sum())})
            ece += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return {"bins": rows, "ece": float(ece)}


def _plots(out_dir: Path, result: dict, real: tuple, syn: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = result["classes"]
    for name, key, title in ((CONFUSION_REAL, "real", "real held-out"), (CONFUSION_SYNTHETIC, "synthetic",
                                                                          "synthetic")):
        cm = np.asarray(result[key]["confusion_matrix"], dtype=float)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        side = 1.2 + 0.7 * len(classes)
        fig, ax = plt.subplots(figsize=(side + 1, side))
        im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true" if key == "real" else "intended")
        ax.set_title(f"{title}: accuracy {result[key]['accuracy']:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for key, colour in (("real", "tab:blue"), ("synthetic", "tab:orange")):
        rel = result["calibration"][key]
        ax.plot([b["confidence"] for b in rel["bins"]], [b["accuracy"] for b in rel["bins"]], "o-", color=colour,
                label=f"{key} (ECE {rel['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-class confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(out_dir / CALIBRATION_PNG, dpi=100, bbox_inches="tight")
    plt.close(fig)

    (rp, rt), (sp, st) = real, syn
    fig, axes = plt.subplots(1, len(classes), figsize=(3 * len(classes), 2.6), squeeze=False)
    edges = np.linspace(0, 1, BINS + 1)
    for c, (ax, name) in enumerate(zip(axes[0], classes)):
        for probs, truth, label in ((rp, rt, "real"), (sp, st, "synthetic")):
            if (truth == c).any():  # a class with no image in a set has no histogram
                ax.hist(probs[truth == c, c], edges, density=True, alpha=0.6, label=label)
        kl = result["confidence"].get(name, {}).get("kl_synthetic_real")
        ax.set_title(name + (f": KL {kl:.3f}" if kl is not None else ""), fontsize=9)
        ax.set_xlabel(f"p({name})")
    axes[0][0].legend(fontsize=8)
    fig.savefig(out_dir / CONFIDENCE_PNG, dpi=90, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------ the run
def judge(
    samples_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    classifier: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = 8,
    train_per_class: int | None = 500,
    heldout_per_class: int | None = 500,
    size: int | None = None,
    channels: int | None = None,
    batch_size: int = 64,
    log: bool = False,
) -> dict:
    """Judge ``samples_dir`` with a classifier trained on the training split of ``datalist`` (or the one saved at
    ``classifier``); write ``judge.json``, the classifier, the confusion-matrix, calibration and confidence PNGs into
    ``out_dir`` and return what ``judge.json`` holds.

    ``size``/``channels`` default to the samples' own; ``train_per_class``/``heldout_per_class`` cap the real images
    per class (``None``: all); ``seed`` draws them and seeds the classifier's initialisation and shuffling."""
    from medgen.networks.weights_meta import samples_meta

    t0 = time.time()
    out = Path(out_dir)
    data = read_datalist(datalist)
    classes = list(data["classes"])
    records = read_sample_records(samples_dir)
    own_size, own_channels = sample_geometry(samples_dir)
    size, channels = size or own_size, channels or own_channels
    if classifier:  # checked before any image is read
        model, trained_classes, trained_size = load_classifier(classifier)
        ckpt_channels = int(model.conv1.weight.shape[1])
        if trained_classes != classes or trained_size != size or ckpt_channels != channels:
            raise ValueError(f"classifier {classifier} was trained on classes {trained_classes} at {trained_size} px, "
                             f"{ckpt_channels} channel(s); these samples and {datalist} need {classes} at {size} px, "
                             f"{channels} channel(s): leave out --classifier to train one")
    syn_x, syn_y, syn_files, syn_skipped = load_samples(samples_dir, classes, size, channels)
    split = "test" if data.get("test") else "validation"
    prep = preparation_of(samples_meta(samples_dir))
    held = load_real(datalist, split, size, channels, heldout_per_class, seed, **prep)
    held_x, held_y = held.images, held.labels
    out.mkdir(parents=True, exist_ok=True)
    weights = out / CLASSIFIER_FILE
    if classifier:
        import torch

        info = torch.load(classifier, map_location="cpu", weights_only=True)
        training = {k: info[k] for k in ("seed", "epochs", "n_train", "train_per_class", "datalist") if k in info}
        training["reused"] = str(Path(classifier).resolve())
        if Path(classifier).resolve() != weights.resolve():
            import shutil

            shutil.copyfile(classifier, weights)
    else:
        train = load_real(datalist, "training", size, channels, train_per_class, seed, **prep)
        train_x, train_y = train.images, train.labels
        require("judge classifier training", 2 * len(classes), len(train_x), "real training images")
        t1 = time.time()
        if log:
            print(f"judge classifier: {len(train_x)} real training images at {size} px, {epochs} epochs")
        model = train_classifier(train_x, train_y, len(classes), epochs=epochs, batch_size=batch_size, seed=seed,
                                 log=log)
        training = {"seed": seed, "epochs": epochs, "n_train": int(len(train_x)), "train_per_class": train_per_class,
                    "train_counts": np.bincount(train_y, minlength=len(classes)).tolist(),
                    "datalist": str(Path(datalist).resolve()), "seconds": round(time.time() - t1, 1)}
        save_classifier(model, weights, classes, size, extra={k: v for k, v in training.items() if k != "seconds"})
    real_probs = predict_proba(model, held_x)
    syn_probs = predict_proba(model, syn_x)
    real_pred, syn_pred = real_probs.argmax(1), syn_probs.argmax(1)
    real = classification_scores(held_y, real_pred, classes)
    synthetic = classification_scores(syn_y, syn_pred, classes)
    per_class_gap = {
        name: (None if real["per_class"][name]["accuracy"] is None or synthetic["per_class"][name]["accuracy"] is None
               else 100.0 * (real["per_class"][name]["accuracy"] - synthetic["per_class"][name]["accuracy"]))
        for name in classes
    }
    result = {
        "samples_dir": str(samples_dir),
        "datalist": str(datalist),
        "classes": classes,
        "image_size": size,
        "channels": channels,
        "heldout_split": split,
        "heldout_per_class": heldout_per_class,
        "real_skipped": dict(held.skipped),
        "classifier": {"file": CLASSIFIER_FILE, "sha256": sha256_of(weights), "network": "MONAI ResNet (basic "
                       "blocks 2-2-2-2, 16-32-64-128 planes)", **training},
        "seed": int(training.get("seed", seed)),
        "counts": {"real": real["n"], "synthetic": synthetic["n"], "samples_listed": len(records),
                   "samples_left_out": dict(syn_skipped)},
        "real": real,
        "synthetic": synthetic,
        "accuracy_gap_points": 100.0 * (real["accuracy"] - synthetic["accuracy"]),
        "accuracy_gap_points_per_class": per_class_gap,
        "chi_square": chi_square_predicted(held_y, real_pred, syn_y, syn_pred, classes),
        "confidence": confidence_tests(real_probs, held_y, syn_probs, syn_y, classes),
        "calibration": {"real": reliability(real_probs, held_y), "synthetic": reliability(syn_probs, syn_y)},
        "figures": {"confusion_real": CONFUSION_REAL, "confusion_synthetic": CONFUSION_SYNTHETIC,
                    "calibration": CALIBRATION_PNG, "confidence": CONFIDENCE_PNG},
        "synthetic_files_misclassified": [f for f, t, p in zip(syn_files, syn_y, syn_pred) if t != p][:50],
    }
    _plots(out, result, (real_probs, held_y), (syn_probs, syn_y))
    result["seconds"] = round(time.time() - t0, 1)
    write_text_atomic(json.dumps(result, indent=2), out / JUDGE_JSON)
    return result


def judge_table(result: dict) -> str:
    """The side-by-side table: real vs synthetic accuracy per class, the gap, and the tests in one line each."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    rows = [f"{'class':<16}{'n real':>8}{'real acc':>10}{'n synth':>9}{'synth acc':>11}{'gap (pts)':>11}"]
    for name in result["classes"]:
        r, s = result["real"]["per_class"][name], result["synthetic"]["per_class"][name]
        rows.append(f"{name:<16}{r['n']:>8}{f(r['accuracy']):>10}{s['n']:>9}{f(s['accuracy']):>11}"
                    f"{f(result['accuracy_gap_points_per_class'][name], '.1f'):>11}")
    rows.append(f"{'overall':<16}{result['real']['n']:>8}{result['real']['accuracy']:>10.3f}"
                f"{result['synthetic']['n']:>9}{result['synthetic']['accuracy']:>11.3f}"
                f"{result['accuracy_gap_points']:>11.1f}")
    chi, conf = result["chi_square"], result["confidence"].get("overall", {})
    rows.append(f"chi-square of predicted labels (stratified by class): {chi['statistic']:.2f}, dof {chi['dof']}, "
                f"p = {chi['p_value']:.3g}")
    if conf:
        rows.append(f"confidence in the intended class: KL(synthetic||real) {conf['kl_synthetic_real']:.3f}, "
                    f"KS {conf['ks_statistic']:.3f} (p = {conf['ks_p_value']:.3g})")
    rows.append(f"classifier: seed {result['seed']}, sha256 {result['classifier']['sha256'][:16]}..., "
                f"ECE real {result['calibration']['real']['ece']:.3f} / synthetic "
                f"{result['calibration']['synthetic']['ece']:.3f}")
    return "\n".join(rows)


def judge_command(
    samples_dir: str, datalist: str, out_dir: str, classifier: str | None = None, seed: int = 0, epochs: int = 8,
    train_per_class: int | None = 500, heldout_per_class: int | None = 500, size: int | None = None,
    max_gap: float | None = None, batch_size: int = 64,
) -> int:
    """``medgen judge SAMPLES DATALIST --out DIR``: judge.json + PNGs + the printed table. Exit 0 done; 1 when
    ``max_gap`` is given and the accuracy gap (points) exceeds it; 2 bad input (one line naming the file)."""
    import sys

    from medgen.metrics.commands import BAD_INPUT

    try:
        result = judge(samples_dir, datalist, out_dir, classifier=classifier, seed=seed, epochs=epochs,
                       train_per_class=train_per_class, heldout_per_class=heldout_per_class, size=size,
                       batch_size=batch_size, log=True)
    except BAD_INPUT as e:  # a bad weights file is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    left_out = result["counts"].get("samples_left_out")
    if left_out:
        print(f"samples left out: {left_out_text(left_out)} (judge.json: counts)")
    print(judge_table(result))
    print(f"wrote {Path(out_dir) / JUDGE_JSON}, {CONFUSION_REAL}, {CONFUSION_SYNTHETIC}, {CALIBRATION_PNG}, "
          f"{CONFIDENCE_PNG} and {CLASSIFIER_FILE}")
    if max_gap is not None and result["accuracy_gap_points"] > max_gap:
        print(f"accuracy gap {result['accuracy_gap_points']:.1f} points exceeds --max-gap {max_gap:g}", file=sys.stderr)
        return 1
    return 0


def evaluation_judge(
    samples_dir: str | os.PathLike, datalist: str | os.PathLike, out_dir: str | os.PathLike, **kwargs
) -> dict:
    """The judge as a section of ``medgen evaluate``: :func:`judge` into ``out_dir`` (``folder`` added, for the
    report's plots); a set too small or unreadable for it becomes ``{"error": ...}`` instead of stopping the
    evaluation."""
    from medgen.metrics.errors import TooFewImagesError

    try:
        return {**judge(samples_dir, datalist, out_dir, **kwargs), "folder": str(out_dir)}
    except (ImageSetError, TooFewImagesError) as e:
        return {"error": str(e)}
