"""The run folder's ``training_curves.png``: mean loss per epoch, and FID per evaluation when the run measures it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medgen.fileio import read_json_lines

logger = logging.getLogger(__name__)

CURVES_NAME = "training_curves.png"


def write_training_curves(run_dir: str | Path, loss_name: str = "loss.jsonl",
                          fid_name: str = "fid.jsonl") -> Path | None:
    """Plot ``loss.jsonl`` (and ``fid.jsonl``) of ``run_dir`` into ``training_curves.png``, replaced atomically.

    A plotting failure is logged, never raised: the curves are a view of the run, not part of it.
    """
    run_dir = Path(run_dir)
    loss = read_json_lines(run_dir / loss_name) if (run_dir / loss_name).is_file() else []
    fids = read_json_lines(run_dir / fid_name) if (run_dir / fid_name).is_file() else []
    if not loss and not fids:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if fids else 1
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.4), squeeze=False)
        ax = axes[0][0]
        ax.plot([r["epoch"] for r in loss], [r["loss"] for r in loss], marker="o", ms=3)
        ax.set(xlabel="epoch", ylabel="mean training loss", title="loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if fids:
            ax = axes[0][1]
            ax.plot([r["epoch"] for r in fids], [r["fid"] for r in fids], marker="o", ms=3, color="tab:red")
            best = min(fids, key=lambda r: r["fid"])
            ax.scatter([best["epoch"]], [best["fid"]], s=60, facecolors="none", edgecolors="k",
                       label=f"best {best['fid']:.1f} (epoch {best['epoch']})")
            ax.set(xlabel="epoch", ylabel=f"FID ({fids[-1].get('features', '')})", title="FID on a fixed seed set")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = run_dir / CURVES_NAME
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, out)
        return out
    except Exception as err:  # noqa: BLE001 - a view of the run must never stop it
        logger.warning("could not draw %s: %s", run_dir / CURVES_NAME, err)
        return None
