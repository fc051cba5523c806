"""The quality protocol: one definition of "how good are these samples", used by ``benchmarks.quality``,
``medgen evaluate`` and the model cards.

- **Counts.** N generated images per class = the held-out split's count of that class (test, else validation),
  capped at :data:`HELDOUT_CAP`. FID is biased by N, so every FID is compared with a floor measured at the same N.
- **Reference.** The training split, at most :data:`REFERENCE_CAP` images per class drawn with the seed, prepared as
  training prepared them (the weights' ``resize_mode`` / window).
- **Floor.** Held-out real images vs the same reference, the same N per class: what a perfect generator would score.
- **Figures.** TF-Inception FID (the published network), KID (unbiased at these sizes), precision / recall / density /
  coverage (k = 5), per class and overall, and ``fid_ratio`` = FID / floor FID per class (1.0 = as good as real).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medgen.metrics.distribution import fid, kid, prdc
from medgen.metrics.errors import TooFewImagesError

HELDOUT_CAP = 500
REFERENCE_CAP = 1000
PRDC_K = 5


class ProtocolError(ValueError):
    """A request the protocol cannot honour (more images than the held-out split has, an unknown class, ...)."""


def heldout_split(datalist: Mapping) -> str:
    """The split held out from training: ``test`` where the data set has one, else ``validation``."""
    for split in ("test", "validation"):
        if datalist.get(split):
            return split
    raise ProtocolError("the datalist has neither a 'test' nor a 'validation' split to use as held-out real images")


def protocol_counts(datalist: Mapping, cap: int = HELDOUT_CAP) -> dict[str, int]:
    """Generated images per class: the held-out split's count of each class, capped at ``cap``."""
    classes = list(datalist["classes"])
    labels = [int(item.get("label", 0)) for item in datalist[heldout_split(datalist)]]
    counts = {name: min(cap, labels.count(k)) for k, name in enumerate(classes)}
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ProtocolError(f"the held-out split has no images of class(es) {empty}: no floor can be measured for them")
    return counts


def check_per_class(counts: Mapping[str, int], per_class: int | None) -> dict[str, int]:
    """``counts`` limited to ``per_class`` (a cheaper run); asking for more than a class allows is an error."""
    if per_class is None:
        return dict(counts)
    if per_class < 2:
        raise ProtocolError(f"per-class count must be at least 2 for FID, got {per_class}")
    over = {name: n for name, n in counts.items() if per_class > n}
    if over:
        name, n = next(iter(over.items()))
        raise ProtocolError(
            f"asked for {per_class} generated images per class, but the held-out split has only {n} of class "
            f"{name!r} to measure the floor with at the same count: use at most {min(counts.values())} per class"
        )
    return {name: per_class for name in counts}


def _equal_draw(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``n`` of the True entries of ``mask``, drawn without replacement."""
    idx = np.flatnonzero(mask)
    return np.sort(rng.choice(idx, size=n, replace=False)) if len(idx) > n else idx


def _figures(ref: np.ndarray, other: np.ndarray, kid_subsets: int) -> dict:
    out: dict = {"n": int(len(other))}
    try:
        out["fid"] = float(fid(ref, other))
        k = kid(ref, other, subsets=kid_subsets)
        out["kid"] = float(k["mean"]) if isinstance(k, dict) else float(k)
        out.update({key: float(v) for key, v in prdc(ref, other, k=PRDC_K).items()})
    except TooFewImagesError as err:
        out["error"] = str(err)
    return out


def score_protocol(
    classes: Sequence[str],
    reference: tuple[np.ndarray, np.ndarray],
    generated: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    kid_subsets: int = 50,
) -> dict:
    """Protocol figures from features: each argument is ``(features N x D, integer labels N)``.

    Per class, generated and held-out features are cut to the same count (the smaller of the two), so the floor is
    measured at the generated set's N; ``overall`` pools the classes as cut.
    """
    rng = np.random.default_rng(seed)
    (rf, rl), (gf, gl), (hf, hl) = reference, generated, heldout
    gl, hl, rl = np.asarray(gl), np.asarray(hl), np.asarray(rl)
    out: dict = {"classes": {}, "definition": __doc__.split("\n\n", 1)[1].strip()}
    keep_g, keep_h = [], []
    for k, name in enumerate(classes):
        n = int(min((gl == k).sum(), (hl == k).sum()))
        g_idx, h_idx = _equal_draw(gl == k, n, rng), _equal_draw(hl == k, n, rng)
        keep_g.append(g_idx)
        keep_h.append(h_idx)
        ref_k = rf[rl == k]
        entry = {"n_reference": int(len(ref_k)), "generated": _figures(ref_k, gf[g_idx], kid_subsets),
                 "floor": _figures(ref_k, hf[h_idx], kid_subsets)}
        entry["fid_ratio"] = _ratio(entry)
        out["classes"][name] = entry
    g_all, h_all = np.concatenate(keep_g), np.concatenate(keep_h)
    overall = {"n_reference": int(len(rf)), "generated": _figures(rf, gf[g_all], kid_subsets),
               "floor": _figures(rf, hf[h_all], kid_subsets)}
    overall["fid_ratio"] = _ratio(overall)
    out["overall"] = overall
    return out


def _ratio(entry: Mapping) -> float | None:
    g, f = entry["generated"].get("fid"), entry["floor"].get("fid")
    return float(g / f) if g is not None and f else None


def ratio_rows(result: Mapping) -> list[dict]:
    """One printable row per class and overall: N, FID, floor, ratio, KID, precision, recall."""
    rows = []
    for name, entry in [*result["classes"].items(), ("overall", result["overall"])]:
        g, f = entry["generated"], entry["floor"]
        rows.append({"class": name, "N": g.get("n"), "FID": g.get("fid"), "floor FID": f.get("fid"),
                     "FID / floor": entry.get("fid_ratio"), "KID": g.get("kid"), "floor KID": f.get("kid"),
                     "precision": g.get("precision"), "recall": g.get("recall")})
    return rows
