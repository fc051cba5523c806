"""A self-contained ``report.html`` (inline CSS, images as base64 PNG; opens offline) from an evaluation's metrics."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from medgen.metrics.image_sets import ImageSet
from medgen.metrics.memorisation import AuditResult, closest_pairs_canvas
from medgen.report.figures import (
    audit_figure,
    histogram_figure,
    image_row,
    png_data_uri,
    spectrum_figure,
    utility_figure,
)

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}img{margin:4px 0}
.err{color:#a00}.note{color:#555;font-size:90%}"""

SECTIONS = ("summary", "samples", "histograms", "mse-ssim", "memorisation", "error-analysis", "utility")


def _fmt(v, nd: int = 4) -> str:
    if isinstance(v, dict) and "error" in v:
        return f'<span class="err">{html.escape(v["error"])}</span>'
    if isinstance(v, dict) and "value" in v:
        v = v["value"]
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.1f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, str) else _fmt(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def metric_rows(scores: dict, extractors: list[str], label: str) -> list[list]:
    """One table row per (class or overall) x extractor: FID, KID, PRDC and MS-SSIM."""
    rows = []
    for group, m in scores.items():
        for ex in extractors:
            f = m.get(ex, {})
            kid, pr = f.get("kid", {}), f.get("prdc", {})
            kid_s = _fmt(kid) if "error" in kid else f"{kid.get('mean', float('nan')):.4g} ± {kid.get('std', 0):.2g}"
            ms = m.get("ms_ssim_generated", {})
            rows.append(
                [
                    label,
                    group,
                    ex,
                    m["n_real"],
                    m["n_generated"],
                    _fmt(f.get("fid", {})),
                    kid_s,
                    *(
                        _fmt(pr) if "error" in pr else _fmt(pr.get(k, ""))
                        for k in ("precision", "recall", "density", "coverage")
                    ),
                    _fmt(ms.get("mean", "")) if "error" not in ms else _fmt(ms),
                ]
            )
    return rows


def write_report(
    path: str | os.PathLike,
    metrics: dict,
    reference: ImageSet,
    generated: ImageSet,
    heldout: ImageSet | None = None,
    audit: AuditResult | None = None,
    n_show: int = 8,
) -> Path:
    """Write the report; ``metrics`` is what :func:`medgen.metrics.evaluate.evaluate` returns."""
    classes, ex = metrics["classes"], list(metrics["extractors"])
    parts = [
        f"<h1>medgen evaluation</h1><p class='note'>samples: {html.escape(metrics['samples_dir'])}<br>"
        f"real: {html.escape(metrics['datalist'])}; image size {metrics['image_size']}; "
        f"{metrics['n_generated']} generated, {metrics['n_reference']} real reference (training), "
        f"{metrics['n_heldout']} real held-out. Feature extractors: "
        f"{html.escape(', '.join(f'{k} = {v}' for k, v in metrics['extractors'].items()))}</p>"
    ]
    header = [
        "set",
        "group",
        "features",
        "N real",
        "N set",
        "FID",
        "KID",
        "precision",
        "recall",
        "density",
        "coverage",
        "MS-SSIM",
    ]
    rows = metric_rows(metrics["generated"], ex, "generated")
    rows += metric_rows(metrics.get("floor_real_heldout", {}), ex, "floor: real held-out")
    for name, scores in metrics.get("baselines", {}).items():
        rows += metric_rows(scores, ex, f"baseline: {name}")
    parts.append(
        f'<h2 id="summary">Metrics</h2>{_table(header, rows)}<p class="note">MS-SSIM over random pairs of '
        "one class (lower = more diverse; target &lt; 0.5). The floor row scores real held-out images the "
        "same way: a model cannot be expected to beat it.</p>"
    )

    parts.append('<h2 id="samples">Real vs generated, per class</h2>')
    for c, name in enumerate(classes):
        real_row = png_data_uri(image_row(reference.of_class(c).images, n_show))
        gen_row = png_data_uri(image_row(generated.of_class(c).images, n_show))
        parts.append(f"<h3>{html.escape(name)}</h3><p>real</p>{_img(real_row, 'real')}")
        parts.append(f"<p>generated</p>{_img(gen_row, 'generated')}")

    hist = {c: m["histogram"] for c, m in metrics["generated"].items() if c != "overall"}
    hist_rows = [
        [c, _fmt(h)] if "error" in h else [c, h["chi2"], h["chi2_per_pixel"], h["p_value"], h["kl_real_fake"]]
        for c, h in hist.items()
    ]
    parts.append(
        f'<h2 id="histograms">Pixel-intensity histograms</h2>{_img(histogram_figure(hist), "histograms")}'
        f"{_table(['class', 'chi2', 'chi2 / pixel', 'p', 'KL(real||gen)'], hist_rows)}"
    )

    tab = metrics.get("mse_ssim_table", [])
    parts.append(
        '<h2 id="mse-ssim">Real vs synthetic MSE / SSIM</h2>'
        + _table(["A", "B", "MSE", "SSIM", "pairs"], [[r["a"], r["b"], r["mse"], r["ssim"], r["pairs"]] for r in tab])
    )

    mem = metrics.get("memorisation", {})
    parts.append(
        f'<h2 id="memorisation">Memorisation audit</h2><p>{mem.get("n_flagged", 0)} of '
        f"{mem.get('n_generated', 0)} generated images flagged (closer to a training image than the "
        f"percentile {mem.get('percentile', 1):g} of held-out-to-train distances).</p>"
    )
    if mem.get("flagged"):
        parts.append(
            _table(
                ["index", "file", "pixel L2", "nearest training file"],
                [[f["index"], f.get("file", ""), f["pixel_l2"], f.get("train_file", "")] for f in mem["flagged"][:50]],
            )
        )
    if audit is not None:
        parts.append(
            _img(
                audit_figure(
                    audit.dist_pixel,
                    audit.heldout_pixel,
                    audit.threshold_pixel,
                    "RMS pixel distance to nearest training image",
                ),
                "audit pixel",
            )
        )
        if audit.dist_feature is not None:
            parts.append(
                _img(
                    audit_figure(
                        audit.dist_feature,
                        audit.heldout_feature,
                        audit.threshold_feature,
                        "feature cosine distance to nearest training image",
                    ),
                    "audit feature",
                )
            )
        canvas = closest_pairs_canvas(generated.images, reference.images, audit, n_show)
        parts.append(f"<p>Closest pairs (generated | nearest training image)</p>{_img(png_data_uri(canvas), 'pairs')}")

    ea = metrics.get("error_analysis", {})
    parts.append('<h2 id="error-analysis">Error analysis</h2>')
    if "realism" in ea:
        most, least = np.asarray(ea["realism"]["most"]), np.asarray(ea["realism"]["least"])
        parts.append(
            f"<p>most realistic</p>{_img(png_data_uri(image_row(generated.images[most], n_show)), 'most')}"
            f"<p>least realistic</p>{_img(png_data_uri(image_row(generated.images[least], n_show)), 'least')}"
        )
    mc = ea.get("mode_collapse", {})
    if mc and "error" not in mc:
        parts.append(
            "<p>k-means of real features; share of real and generated images per cluster "
            f"(empty clusters {mc['empty_clusters']}, generated entropy {mc['generated_entropy']:.3f}, "
            f"total variation {mc['total_variation']:.3f})</p>"
            + _table(
                ["cluster", "real", "generated"],
                [[i, r, g] for i, (r, g) in enumerate(zip(mc["real_share"], mc["generated_share"]))],
            )
        )
    if "spectrum" in ea:
        parts.append(_img(spectrum_figure(ea["spectrum"]), "spectrum"))

    parts.append('<h2 id="utility">Downstream utility</h2>')
    ut = metrics.get("utility")
    if ut:
        rows = [
            [
                r["real_per_class"],
                r["arm"],
                r["n_train"],
                r["accuracy"],
                *(f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]" for a in r["auc"].values()),
            ]
            for r in ut["rows"]
        ]
        parts.append(
            _table(["real / class", "arm", "N train", "accuracy", *(f"AUC {c} [95% CI]" for c in ut["classes"])], rows)
        )
        parts.append(
            _table(
                ["real / class", "only real+syn correct", "only real correct", "McNemar p"],
                [
                    [t["real_per_class"], t["only_real_plus_synthetic_correct"], t["only_real_correct"], t["p_value"]]
                    for t in ut["mcnemar"]
                ],
            )
        )
        parts.append(_img(utility_figure(ut), "utility"))
    else:
        parts.append("<p class='note'>not run (enable with utility sizes).</p>")

    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medgen evaluation</title><style>{CSS}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path
