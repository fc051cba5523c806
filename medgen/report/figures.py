"""Figures for the evaluation report, returned as base64 PNG data URIs (matplotlib Agg backend, PIL)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def png_data_uri(array: np.ndarray) -> str:
    """A 2-D array in [0, 1] as a ``data:image/png;base64,...`` URI."""
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
    """Up to ``n`` N x 1 x H x W images side by side on a white background."""
    images = images[:n]
    h, w = images.shape[-2:]
    row = np.ones((h, max(len(images), 1) * (w + gap) - gap), dtype=np.float32)
    for i, img in enumerate(images):
        row[:, i * (w + gap) : i * (w + gap) + w] = img[0]
    return row


def histogram_figure(per_class: dict[str, dict]) -> str:
    """Pixel-intensity histograms, real vs generated, one panel per class."""
    names = [c for c, m in per_class.items() if "hist_real" in m]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        h = per_class[name]
        x = (np.arange(len(h["hist_real"])) + 0.5) / len(h["hist_real"])
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


def utility_figure(utility: dict) -> str:
    """AUC (last class, one-vs-rest) with bootstrap 95% CI against real images per class, for both arms."""
    cls = utility["classes"][-1]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm in ("real", "real+synthetic"):
        rows = [r for r in utility["rows"] if r["arm"] == arm]
        x = np.arange(len(rows)) + (0.05 if arm != "real" else -0.05)
        a = [r["auc"][cls] for r in rows]
        y = np.array([v["auc"] for v in a])
        err = np.array([[v["auc"] - v["ci_low"] for v in a], [v["ci_high"] - v["auc"] for v in a]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
        ax.set_xticks(np.arange(len(rows)), [str(r["real_per_class"]) for r in rows])
    ax.set_xlabel("real training images per class")
    ax.set_ylabel(f"AUC ({cls}) on real test")
    ax.legend()
    return figure_data_uri(fig)
