"""The "Classifier judge" section of ``report.html``: real vs synthetic accuracy per class, the tests, and the
confusion-matrix, calibration and confidence plots that :func:`medgen.metrics.judge.judge` wrote (inlined)."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _f(v, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def judge_section(judge: dict | None) -> str:
    """HTML for ``metrics["judge"]`` (what ``judge.json`` holds plus ``folder``); '' when the section was skipped."""
    head = '<h2 id="judge">Classifier judge</h2>'
    if not judge:
        return ""
    if "error" in judge:
        return f"{head}<p>not computed: {html.escape(str(judge['error']))}</p>"
    real, syn = judge["real"], judge["synthetic"]
    rows = []
    for name in judge["classes"]:
        r, s = real["per_class"][name], syn["per_class"][name]
        rows.append([html.escape(name), r["n"], _f(r["accuracy"]), _f(r["f1"]), s["n"], _f(s["accuracy"]),
                     _f(s["f1"]), _f(judge["accuracy_gap_points_per_class"][name], 1)])
    rows.append(["<b>overall</b>", real["n"], _f(real["accuracy"]), "", syn["n"], _f(syn["accuracy"]), "",
                 _f(judge["accuracy_gap_points"], 1)])
    table = _table(["class", "N real", "real accuracy", "real F1", "N synthetic", "synthetic accuracy",
                    "synthetic F1", "gap (points)"], rows)
    chi = judge["chi_square"]
    test_rows = []
    for key, c in judge["confidence"].items():
        x = chi if key == "overall" else chi["per_class"].get(key, {})
        test_rows.append([html.escape(key), _f(x.get("statistic"), 2), x.get("dof", "-"), _f(x.get("p_value"), 4),
                          _f(c["kl_synthetic_real"]), _f(c["ks_statistic"]), _f(c["ks_p_value"], 4),
                          _f(c["mean_real"]), _f(c["mean_synthetic"])])
    tests = _table(["class", "chi-square", "dof", "p", "KL(synthetic||real)", "KS", "KS p", "mean conf. real",
                    "mean conf. synthetic"], test_rows)
    cls = judge["classifier"]
    note = (f"A {html.escape(cls['network'])} trained on the real training split only "
            f"({cls.get('n_train', '?')} images, {cls.get('epochs', '?')} epochs, seed {judge['seed']}; "
            f"sha256 {cls['sha256'][:16]}...) labels the real held-out images ({html.escape(judge['heldout_split'])} "
            f"split) and the synthetic ones. Gap = real minus synthetic accuracy. Chi-square: predicted-label counts "
            "of synthetic vs real images of the same intended class (overall: the per-class tests summed). KL and "
            "KS: the classifier's confidence in the intended class. Expected calibration error: real "
            f"{judge['calibration']['real']['ece']:.3f}, synthetic {judge['calibration']['synthetic']['ece']:.3f}.")
    folder = Path(judge.get("folder", "."))
    figs = judge.get("figures", {})
    plots = "".join(_png(folder / figs[k], k) for k in ("confusion_real", "confusion_synthetic", "calibration",
                                                        "confidence") if k in figs)
    return f"{head}<p class='note'>{note}</p>{table}{tests}{plots}"
