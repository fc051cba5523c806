"""A self-contained ``report.html`` (inline CSS, images as base64 PNG; opens offline) from an evaluation's metrics.

Images keep their colour: a colour (RGB) evaluation shows colour sample rows, closest pairs and realism rows, and
histograms per channel (R, G, B in their colours); a grey one shows them grey."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from medgen.fileio import write_text_atomic
from medgen.metrics.image_sets import ImageSet
from medgen.metrics.memorisation import EVALUATE_PHI_NOTE, AuditResult, closest_pairs_canvas
from medgen.metrics.utility import comparisons
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

SECTIONS = ("protocol", "summary", "samples", "histograms", "mse-ssim", "memorisation", "error-analysis",
            "utility", "judge")


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


def _auc_cell(a: dict) -> str:
    return f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def utility_section(ut: dict | None, note: str = "") -> str:
    """The "Downstream utility" section: per real size and arm, AUC per class with bootstrap 95% CI, F1, accuracy,
    the AUC gain of each synthetic arm over real only, McNemar (raw and Bonferroni-corrected across the tests), the
    confusion matrices and the AUC plot; ``ut`` is what :func:`medgen.metrics.utility.utility_experiment` returns."""
    head = '<h2 id="utility">Downstream utility</h2>'
    if not ut:
        return head + "<p class='note'>not run (enable with utility sizes, or give a utility JSON).</p>"
    classes = list(ut["classes"])
    tests, gains = comparisons(ut)
    minority = ut.get("minority_class") or classes[-1]
    rows = []
    for r in ut["rows"]:
        size = r["real_per_class"]
        t, g = tests.get((r["arm"], size), {}), gains.get((r["arm"], size), {}).get(minority, {})
        rows.append(
            [
                size if r["arm"] != "synthetic only" else "0 (synthetic only)",
                r["arm"],
                r["n_train"],
                r.get("n_synthetic", ""),
                r["accuracy"],
                *(_auc_cell(r["auc"][c]) for c in classes),
                *(_fmt(r["f1"][c], 3) if "f1" in r else "" for c in classes),
                f"{g['gain']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]" if g else "",
                _fmt(t["p_value"], 3) if t else "",
                _fmt(t["p_bonferroni"], 3) if t and "p_bonferroni" in t else "",
            ]
        )
    header = ["real / class", "arm", "N train", "N synthetic", "accuracy", *(f"AUC {c} [95% CI]" for c in classes),
              *(f"F1 {c}" for c in classes), f"AUC gain {minority} [95% CI]", "McNemar p", "p (Bonferroni)"]
    parts = [head]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append(_table(header, rows))
    parts.append(
        "<p class='note'>AUC: one-vs-rest on the real held-out test set, mean over classifier seeds, percentile "
        "bootstrap 95% interval over test images. McNemar: exact test of real only vs the arm of that row on the "
        f"same test images (first seed), Bonferroni-corrected across the {ut.get('bonferroni_tests', len(tests))} "
        f"tests (sizes x arms). Minority class of the training data: {html.escape(str(minority))}.</p>"
    )
    cm_rows = [
        [r["real_per_class"], r["arm"], " | ".join(" ".join(str(v) for v in row) for row in r["confusion_matrix"])]
        for r in ut["rows"]
        if "confusion_matrix" in r
    ]
    if cm_rows:
        parts.append(
            f"<p class='note'>Confusion matrices summed over seeds (rows true {html.escape(', '.join(classes))}; "
            "columns predicted, same order)</p>" + _table(["real / class", "arm", "confusion matrix"], cm_rows)
        )
    parts.append(_img(utility_figure(ut), "utility"))
    return "".join(parts)


def write_utility_report(path: str | os.PathLike, result: dict) -> Path:
    """A stand-alone page with the utility section of a utility JSON (``benchmarks.utility`` writes one)."""
    ut = result.get("utility", result)
    bits = [f"{k}: {result[k]}" for k in ("bundle", "weights_sha256", "sampler", "steps", "guidance_scale",
                                          "guidance_interval", "guide_sha256", "image_size", "model_image_size")
            if result.get(k) is not None]
    return _write_page(path, "medgen downstream utility",
                       f"<h1>medgen downstream utility</h1>{utility_section(ut, '; '.join(bits))}")


def _write_page(path: str | os.PathLike, title: str, body: str) -> Path:
    """A self-contained HTML page (inline style, images as data URIs)."""
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>{body}</body></html>")
    return write_text_atomic(doc, path)


def protocol_section(protocol: dict | None) -> str:
    """The quality protocol's table: FID, the real-data floor at the same N, their ratio, KID, precision, recall."""
    if not protocol:
        return ""
    from medgen.metrics.protocol import ratio_rows

    cols = ["class", "N", "FID", "floor FID", "FID / floor", "KID", "floor KID", "precision", "recall"]
    rows = [[r[c] if c in ("class", "N") else _fmt(r[c], 3) for c in cols] for r in ratio_rows(protocol)]
    counts = protocol.get("protocol_counts") or {}
    wanted = "" if "error" in counts else (
        f" A full protocol run generates {', '.join(f'{n} {html.escape(str(c))}' for c, n in counts.items())} "
        "images (the held-out counts, capped at 500).")
    used = {c: v.get("generated", {}).get("n") for c, v in (protocol.get("classes") or {}).items()}
    if wanted and any(isinstance(used.get(c), int) and used[c] < n for c, n in counts.items()):
        wanted += (" These are fewer: FID is biased upwards by about 1/N, the floor's more than that of samples far "
                   "from it, so FID / floor here is lower than at the protocol's N (KID is unbiased).")
    return (f'<h2 id="protocol">Quality protocol: FID / real-data floor</h2>{_table(cols, rows)}'
            f"<p class='note'>Features: {html.escape(str(protocol.get('features')))}. Each class's generated images "
            "and real held-out images are cut to the same N and compared with the same training reference; FID / "
            f"floor = 1 means as close to the training images as unseen real images are.{wanted}</p>")


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


def left_out_note(skipped: dict | None) -> str:
    """`` (2 samples left out: 1 deleted from the samples folder, 1 unreadable sample)``, or nothing."""
    if not skipped:
        return ""
    from medgen.metrics.image_sets import left_out_text

    return f" ({sum(skipped.values())} samples left out: {html.escape(left_out_text(skipped))})"


def write_report(
    path: str | os.PathLike,
    metrics: dict,
    reference: ImageSet,
    generated: ImageSet,
    heldout: ImageSet | None = None,
    audit: AuditResult | None = None,
    n_show: int = 8,
    redact: bool = False,
) -> Path:
    """Write the report; ``metrics`` is what :func:`medgen.metrics.evaluate.evaluate` returns.

    ``redact``: no real training pixels (real sample rows, closest pairs) in the report."""
    classes, ex = metrics["classes"], list(metrics["extractors"])
    parts = [
        f"<h1>medgen evaluation</h1><p class='note'>samples: {html.escape(metrics['samples_dir'])}<br>"
        f"real: {html.escape(metrics['datalist'])}; image size {metrics['image_size']}"
        f"{' (RGB)' if metrics.get('channels') == 3 else ''}; "
        f"{metrics['n_generated']} generated{left_out_note(metrics.get('generated_skipped'))}, "
        f"{metrics['n_reference']} real reference (training), "
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
    parts.append(protocol_section(metrics.get("protocol")))
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
        parts.append(f"<h3>{html.escape(name)}</h3>" + ("<p>real: left out (--redact-paths)</p>" if redact else
                                                         f"<p>real</p>{_img(real_row, 'real')}"))
        parts.append(f"<p>generated</p>{_img(gen_row, 'generated')}")

    hist = {c: m["histogram"] for c, m in metrics["generated"].items() if c != "overall"}
    hist_rows = []
    for c, h in hist.items():
        if "error" in h:
            hist_rows.append([c, _fmt(h)])
            continue
        hist_rows.append([c, h["chi2"], h["chi2_per_pixel"], h["p_value"], h["kl_real_fake"]])
        hist_rows += [[f"{c} ({name})", ch["chi2"], ch["chi2_per_pixel"], ch["p_value"], ch["kl_real_fake"]]
                      for name, ch in h.get("per_channel", {}).items()]
    parts.append(
        f'<h2 id="histograms">Pixel-intensity histograms</h2>{_img(histogram_figure(hist), "histograms")}'
        f"{_table(['class', 'chi2', 'chi2 / pixel', 'p', 'KL(real||gen)'], hist_rows)}"
    )

    tab = metrics.get("mse_ssim_table", [])
    parts.append(
        '<h2 id="mse-ssim">Real vs synthetic MSE / SSIM</h2>'
        + _table(["A", "B", "MSE ([0, 1])", "MSE (0-255)", "SSIM", "pairs"],
                 [[r["a"], r["b"], r["mse"], r.get("mse_255", r["mse"] * 255**2), r["ssim"], r["pairs"]] for r in tab])
    )

    mem = metrics.get("memorisation", {})
    parts.append(
        f'<h2 id="memorisation">Memorisation audit</h2><p>{mem.get("n_flagged", 0)} of '
        f"{mem.get('n_generated', 0)} generated images flagged (closer to a training image than the "
        f"percentile {mem.get('percentile', 1):g} of held-out-to-train distances; the aligned measure searches "
        "flips, crops/rescales, shifts, rotations and intensity changes of each training image).</p>"
        f"<p class='note'>{html.escape(EVALUATE_PHI_NOTE)}</p>"
    )
    if mem.get("flagged"):
        parts.append(
            _table(
                ["index", "file", "aligned", "pixel L2", "nearest training file"],
                [[f["index"], f.get("file", ""), f.get("aligned", ""), f["pixel_l2"], f.get("train_file", "")]
                 for f in mem["flagged"][:50]],
            )
        )
    if audit is not None and audit.dist_aligned is not None:
        parts.append(_img(audit_figure(audit.dist_aligned, audit.heldout_aligned, audit.threshold_aligned,
                                       "aligned distance (1 - NCC) to nearest training image"), "audit aligned"))
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
        if not redact:
            canvas = closest_pairs_canvas(generated.images, reference.images, audit, n_show)
            parts.append(f"<p>Closest pairs (generated | nearest training image)</p>"
                         f"{_img(png_data_uri(canvas), 'pairs')}")

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

    parts.append(utility_section(metrics.get("utility")))

    # ---- classifier judge section (metrics["judge"]) goes here: one self-contained call appending its HTML ----
    from medgen.report.judge import judge_section

    parts.append(judge_section(metrics.get("judge")))


    return _write_page(path, "medgen evaluation", "".join(parts))
