"""Figures for the evaluation report, returned as base64 PNG data URIs (matplotlib Agg backend, PIL).

Image rows and pairs keep the images' colour: grey images give a grey PNG, RGB images an RGB PNG."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def png_data_uri(array: np.ndarray) -> str:
    """An H x W (grey) or H x W x 3 (RGB) array in [0, 1] as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def figure_data_uri(fig: plt.Figure) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_row(images: np.ndarray, n: int = 8, gap: int = 2) -> np.ndarray:
    """Up to ``n`` N x C x H x W images side by side on a white background: H x W' for grey, H x W' x 3 for RGB."""
    images = images[:n]
    c, (h, w) = (images.shape[1] if images.ndim == 4 else 1), images.shape[-2:]
    row = np.ones((c, h, max(len(images), 1) * (w + gap) - gap), dtype=np.float32)
    for i, img in enumerate(images):
        row[:, :, i * (w + gap) : i * (w + gap) + w] = img
    return row[0] if c == 1 else np.moveaxis(row, 0, -1)


def histogram_figure(per_class: dict[str, dict]) -> str:
    """Pixel-intensity histograms, real vs generated, one panel per class; for RGB sets (a ``per_channel`` entry)
    the R, G and B histograms in their colours (real solid, generated dashed)."""
    names = [c for c, m in per_class.items() if "hist_real" in m]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        h = per_class[name]
        x = (np.arange(len(h["hist_real"])) + 0.5) / len(h["hist_real"])
        if "per_channel" in h:
            for channel, colour in zip(("R", "G", "B"), ("tab:red", "tab:green", "tab:blue")):
                ch = h["per_channel"][channel]
                ax.plot(x, ch["hist_real"], color=colour, label=f"{channel} real")
                ax.plot(x, ch["hist_fake"], color=colour, ls="--", label=f"{channel} generated")
            kl = ", ".join(f"{c} {h['per_channel'][c]['kl_real_fake']:.3f}" for c in ("R", "G", "B"))
            ax.set_title(f"{name}: KL {kl}", fontsize=9)
            ax.set_xlabel("intensity")
            ax.legend(fontsize=6, ncol=2)
            continue
        ax.plot(x, h["hist_real"], label="real")
        ax.plot(x, h["hist_fake"], label="generated")
        ax.set_title(f"{name}: KL {h['kl_real_fake']:.3f}")
        ax.set_xlabel("intensity")
        ax.legend()
    return figure_data_uri(fig)


def spectrum_figure(spectrum: dict) -> str:
    """Radially averaged power spectra, real vs generated (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    f = np.asarray(spectrum["frequency"])[1:]
    ax.loglog(f, np.asarray(spectrum["real"])[1:], label="real")
    ax.loglog(f, np.asarray(spectrum["generated"])[1:], label="generated")
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("power")
    ax.set_title(f"log-spectral distance {spectrum['log_spectral_distance']:.3f}")
    ax.legend()
    return figure_data_uri(fig)


def audit_figure(dist_generated: np.ndarray, dist_heldout: np.ndarray, threshold: float, what: str) -> str:
    """Nearest-training-image distances: generated vs real held-out, with the flag threshold."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, max(dist_generated.max(), dist_heldout.max()) * 1.05 + 1e-9, 40)
    ax.hist(dist_heldout, bins=bins, alpha=0.6, density=True, label="held-out real -> train")
    ax.hist(dist_generated, bins=bins, alpha=0.6, density=True, label="generated -> train")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel(what)
    ax.legend()
    return figure_data_uri(fig)


def _utility_classes(utility: dict) -> list[str]:
    """Classes worth a panel: with two classes the one-vs-rest AUCs are equal, so the minority class alone."""
    classes = list(utility["classes"])
    if len(classes) == 2:
        return [utility.get("minority_class") or classes[-1]]
    return classes


def utility_plot(utility: dict, title: str | None = None) -> plt.Figure:
    """AUC on real test images (bootstrap 95% CI bars) against real training images per class: real only vs
    real + synthetic (and the synthetic-only classifier fine-tuned on those, where run), and synthetic only
    (train on synthetic, test on real) as a dashed line with its interval."""
    from medgen.metrics.utility import COMPARED, REAL

    classes = _utility_classes(utility)
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 3.6), squeeze=False)
    sizes = list(dict.fromkeys(r["real_per_class"] for r in utility["rows"] if r["arm"] != "synthetic only"))
    for ax, cls in zip(axes[0], classes):
        arms = [REAL, *COMPARED]  # side by side at each size, centred on its tick
        for k, arm in enumerate(arms):
            shift = 0.08 * (k - (len(arms) - 1) / 2)
            rows = {r["real_per_class"]: r for r in utility["rows"] if r["arm"] == arm}
            if not rows:
                continue
            xs = [i + shift for i, s in enumerate(sizes) if s in rows]
            a = [rows[s]["auc"][cls] for s in sizes if s in rows]
            y = np.array([v["auc"] for v in a])
            err = np.array([[v["auc"] - v["ci_low"] for v in a], [v["ci_high"] - v["auc"] for v in a]])
            ax.errorbar(xs, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=arm)
        syn = [r for r in utility["rows"] if r["arm"] == "synthetic only"]
        if syn:
            v = syn[0]["auc"][cls]
            ax.axhline(v["auc"], color="grey", ls="--", label=f"synthetic only ({syn[0]['n_train']} images)")
            ax.axhspan(v["ci_low"], v["ci_high"], color="grey", alpha=0.12)
        ax.set_xticks(np.arange(len(sizes)), [str(s) for s in sizes])
        ax.set_xlabel("real training images per class")
        ax.set_ylabel(f"AUC ({cls} vs rest), real test set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def utility_figure(utility: dict) -> str:
    """:func:`utility_plot` as a PNG data URI."""
    return figure_data_uri(utility_plot(utility))
