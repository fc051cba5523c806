"""Diagnostics of a trained score model: the DSM loss per noise level on held-out images, and the radially averaged
power spectrum of its samples against real images (written as JSON and PNG plots).

The loss per σ shows where the score is learnt badly (a model that has not converged fails at small σ, where fine
detail lives); the spectrum shows whether samples carry the real images' high-frequency content (too little:
blurry; too much: left-over noise, e.g. too few Langevin steps or no final denoising). MONAI has neither, hence this
module; the plots use matplotlib's Agg backend, as ``medgen.report.figures`` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medgen.diffusion.ncsn import NCSNScheduler
from medgen.diffusion.precision import autocast, resolve_dtype
from medgen.diffusion.score_training import DenoisingScoreMatchingLoss

logger = logging.getLogger(__name__)


def collect_images(loader: Iterable[dict[str, torch.Tensor]], max_images: int | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the ``image`` and ``label`` entries of a data loader's batches (at most ``max_images``)."""
    images, labels = [], []
    for batch in loader:
        images.append(torch.as_tensor(batch["image"]).float())
        labels.append(torch.as_tensor(batch["label"]).long().reshape(-1))
        if max_images and sum(len(x) for x in images) >= max_images:
            break
    if not images:
        raise ValueError("no held-out images: the data loader is empty; check the datalist's test split")
    return torch.cat(images)[:max_images], torch.cat(labels)[:max_images]


@torch.inference_mode()
def dsm_loss_per_sigma(network: nn.Module, scheduler: NCSNScheduler, images: torch.Tensor,
                       labels: torch.Tensor | None = None, levels: Sequence[int] | None = None, seed: int = 0,
                       batch_size: int = 32, device: str | torch.device = "cpu", precision: str = "auto",
                       ) -> list[dict[str, Any]]:
    """σ² ‖s_θ(x + σε, σ) + ε/σ‖² / D for each level in ``levels`` (default: all), averaged over ``images``.

    The noise comes from ``torch.Generator().manual_seed(seed)``, the same for every level and every call, so
    numbers compare across checkpoints. Rows: level, sigma, loss, loss_std and (with labels) loss per class label.
    """
    device = torch.device(device)
    dtype = resolve_dtype(device, precision)
    network = network.to(device).eval()
    loss_fn = DenoisingScoreMatchingLoss("mean")
    levels = list(range(scheduler.num_train_timesteps)) if levels is None else [int(v) for v in levels]
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for level in levels:
        sigma = float(scheduler.sigmas[level])
        per_sample = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            eps = noise[start:start + batch_size].to(device)
            cls = None if labels is None else labels[start:start + batch_size].to(device)
            sig = torch.full((len(x),), sigma, device=device)
            with autocast(device, dtype):
                scaled = network(x + sigma * eps, sig, class_labels=cls).float() * sigma
            per_sample.append(loss_fn.per_sample(scaled, -eps).cpu())
        losses = torch.cat(per_sample)
        row: dict[str, Any] = {"level": level, "sigma": sigma, "loss": float(losses.mean()),
                               "loss_std": float(losses.std()) if len(losses) > 1 else 0.0}
        if labels is not None:
            row["per_class"] = {int(c): float(losses[labels == c].mean()) for c in labels.unique()}
        rows.append(row)
    return rows


def radial_power_spectrum(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mean power |FFT(x - mean x)|² / (H W) over images and channels, averaged over rings of integer radius
    (in frequency bins) 0 .. min(H, W) // 2. ``images``: ``(N, C, H, W)``."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    h, w = x.shape[-2:]
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2 / (h * w)).mean(axis=(0, 1))
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    radius = np.round(np.sqrt(fx**2 + fy**2)).astype(int)
    n = min(h, w) // 2 + 1
    sums = np.bincount(radius.ravel(), weights=power.ravel(), minlength=n)[:n]
    counts = np.bincount(radius.ravel(), minlength=n)[:n]
    return sums / np.maximum(counts, 1)


def compare_spectra(real: torch.Tensor | np.ndarray, samples: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Both spectra, their log10 ratio per radius, and the mean |log10 ratio| over the low and high half."""
    if np.asarray(real).shape[-2:] != np.asarray(samples).shape[-2:]:
        raise ValueError(f"real images {tuple(np.asarray(real).shape[-2:])} and samples "
                         f"{tuple(np.asarray(samples).shape[-2:])} differ in size; compare at one resolution")
    p_real, p_fake = radial_power_spectrum(real), radial_power_spectrum(samples)
    ratio = np.log10(np.maximum(p_fake, 1e-20) / np.maximum(p_real, 1e-20))
    half = len(ratio) // 2
    return {
        "radius": list(range(len(p_real))),
        "frequency_cycles_per_pixel": [r / (2 * (len(p_real) - 1)) for r in range(len(p_real))],
        "real": p_real.tolist(), "samples": p_fake.tolist(), "log10_ratio": ratio.tolist(),
        "mean_abs_log10_ratio_low": float(np.abs(ratio[1:half]).mean()),
        "mean_abs_log10_ratio_high": float(np.abs(ratio[half:]).mean()),
        "num_real": int(np.asarray(real).shape[0]), "num_samples": int(np.asarray(samples).shape[0]),
    }


def plot_spectra(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    f = result["frequency_cycles_per_pixel"][1:]
    ax.loglog(f, result["real"][1:], label=f"real (n={result['num_real']})")
    ax.loglog(f, result["samples"][1:], label=f"samples (n={result['num_samples']})", linestyle="--")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log-axis minor labels overlap
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylabel("radially averaged power")
    ax.set_title("power spectrum: samples vs real")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_loss_per_sigma(rows: list[dict[str, Any]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx([r["sigma"] for r in rows], [r["loss"] for r in rows], marker="o")
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("DSM loss σ²‖s + ε/σ‖² / D")
    ax.set_title("held-out denoising score matching loss per σ")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def load_samples(samples_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (float ``.npy`` beside each PNG where present, else the PNG) and labels of a ``SampleRunner``
    folder, read through its ``samples.jsonl``."""
    from PIL import Image

    samples_dir = Path(samples_dir)
    meta = samples_dir / "samples.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"no samples.jsonl in {samples_dir}: run the bundle's inference first, or leave "
                                "samples_dir null to generate samples here")
    from medgen.diffusion.sample_run import latest_records

    images, labels = [], []
    for rec in latest_records(json.loads(line) for line in meta.read_text().splitlines() if line.strip()):
        png = samples_dir / rec["file"]
        if not png.is_file():
            continue  # deleted from the folder (its float copy, if left, is not the image)
        if png.with_suffix(".npy").is_file():
            images.append(torch.from_numpy(np.load(png.with_suffix(".npy"))).float())
        else:
            with Image.open(png) as im:
                images.append(torch.from_numpy(np.asarray(im.convert("L"), np.float32) / 127.5 - 1.0)[None])
        labels.append(int(rec["label"]))
    if not images:
        raise ValueError(f"{meta} lists no image files that exist")
    return torch.stack(images), torch.as_tensor(labels)


class ScoreDiagnostics:
    """The evaluate step of a score bundle: loss per σ on held-out images and the samples' power spectrum.

    Args:
        network: the trained :class:`~medgen.networks.score.ScoreNetwork`.
        scheduler: its :class:`NCSNScheduler`.
        real_loader: batches ``{"image", "label"}`` of held-out real images (the datalist's test split).
        output_dir: where ``dsm_loss_per_sigma.json/.png`` and ``spectrum.json/.png`` go.
        classes: class names (for the table).
        num_levels: levels evaluated, evenly spaced over the L levels.
        max_images: held-out images used (None: all in the loader).
        pipeline: a :class:`~medgen.diffusion.langevin.LangevinPipeline` to make samples with, when
            ``samples_dir`` is None; ``per_class`` images per class, ``num_inference_steps`` levels.
        samples_dir: a folder written by the inference step, used instead of generating.
    """

    def __init__(self, network: nn.Module, scheduler: NCSNScheduler, real_loader: Iterable, output_dir: str | Path,
                 classes: Sequence[str], num_levels: int = 12, max_images: int | None = None,
                 pipeline: Any = None, samples_dir: str | Path | None = None, per_class: int = 8,
                 num_inference_steps: int = 100, guidance_scale: float = 1.0, seed: int = 0, batch_size: int = 32,
                 device: str | torch.device = "cpu", precision: str = "auto") -> None:
        if pipeline is None and not samples_dir:
            raise ValueError("ScoreDiagnostics needs a pipeline to sample from or a samples_dir to read")
        self.network = network
        self.scheduler = scheduler
        self.real_loader = real_loader
        self.output_dir = Path(output_dir)
        self.classes = list(classes)
        self.num_levels = min(int(num_levels), scheduler.num_train_timesteps)
        self.max_images = max_images
        self.pipeline = pipeline
        self.samples_dir = samples_dir
        self.per_class = per_class
        self.steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.batch_size = batch_size
        self.device = device
        self.precision = precision

    def samples(self) -> torch.Tensor:
        if self.samples_dir:
            return load_samples(self.samples_dir)[0]
        labels = [c for c in range(len(self.classes)) for _ in range(self.per_class)]
        seeds = [self.seed + i for i in range(len(labels))]
        return self.pipeline.generate(labels, seeds, self.steps, self.guidance_scale, progress=True)

    def loss_table(self, rows: list[dict[str, Any]]) -> str:
        head = f"{'level':>6} {'sigma':>10} {'loss':>9} {'std':>8}" + "".join(f" {c:>10}" for c in self.classes)
        lines = [head]
        for r in rows:
            per = r.get("per_class", {})
            lines.append(f"{r['level']:>6} {r['sigma']:>10.4g} {r['loss']:>9.4f} {r['loss_std']:>8.4f}"
                         + "".join(f" {per.get(i, float('nan')):>10.4f}" for i in range(len(self.classes))))
        return "\n".join(lines)

    def run(self) -> dict[str, Any]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        real, labels = collect_images(self.real_loader, self.max_images)
        levels = np.round(np.linspace(0, self.scheduler.num_train_timesteps - 1, self.num_levels)).astype(int)
        rows = dsm_loss_per_sigma(self.network, self.scheduler, real, labels, levels.tolist(), self.seed,
                                  self.batch_size, self.device, self.precision)
        table = self.loss_table(rows)
        logger.info("held-out DSM loss per sigma (%d images):\n%s", len(real), table)
        loss_json = {"classes": self.classes, "num_images": len(real), "rows": rows,
                     "mean_over_levels": float(np.mean([r["loss"] for r in rows]))}
        (self.output_dir / "dsm_loss_per_sigma.json").write_text(json.dumps(loss_json, indent=1))
        (self.output_dir / "dsm_loss_per_sigma.txt").write_text(table + "\n")
        plot_loss_per_sigma(rows, self.output_dir / "dsm_loss_per_sigma.png")
        spectrum = compare_spectra(real, self.samples())
        (self.output_dir / "spectrum.json").write_text(json.dumps(spectrum, indent=1))
        plot_spectra(spectrum, self.output_dir / "spectrum.png")
        logger.info("spectrum: mean |log10(samples/real)| low %.3f, high %.3f; written to %s",
                    spectrum["mean_abs_log10_ratio_low"], spectrum["mean_abs_log10_ratio_high"], self.output_dir)
        return {"dsm_loss_per_sigma": loss_json, "spectrum": spectrum}
