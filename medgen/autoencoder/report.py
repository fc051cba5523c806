"""Reconstruction quality on held-out images: the ceiling any latent model built on this autoencoder can reach.

PSNR, SSIM and MS-SSIM are MONAI's ``PSNRMetric``, ``SSIMMetric`` and ``MultiScaleSSIMMetric`` on images in [0, 1];
the FID of reconstructions vs originals uses :mod:`medgen.metrics` (TF-Inception features and the Frechet distance
of the quality protocol). Figures per class and overall go to a JSON file, originals above reconstructions to a PNG.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

from medgen.autoencoder.handlers import reconstruct
from medgen.data.image_io import save_class_grid
from medgen.metrics.errors import TooFewImagesError
from medgen.metrics.image_sets import ImageSet, load_datalist_split, preparation_of
from medgen.networks.weights_meta import meta_value, write_json_atomic

SSIM_KERNEL = 11
#: MS-SSIM's standard five scale weights (Wang et al. 2003); fewer scales on small images, renormalised
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_weights(size: int, kernel_size: int = SSIM_KERNEL) -> tuple[float, ...]:
    """The standard MS-SSIM weights for as many scales as an image of side ``size`` allows (MONAI needs the
    coarsest scale larger than the kernel), renormalised to sum to 1."""
    scales = max((k for k in range(1, len(MS_SSIM_WEIGHTS) + 1) if size // 2 ** (k - 1) > kernel_size - 1),
                 default=0)
    if scales == 0:
        raise ValueError(f"images of side {size} are too small for SSIM with a {kernel_size}-pixel window")
    w = np.asarray(MS_SSIM_WEIGHTS[:scales])
    return tuple(float(x) for x in w / w.sum())


def _image_set(images: Any, meta: Mapping[str, Any] | None, split: str, per_class: int | None,
               image_size: int | None, seed: int) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    if isinstance(images, (str, os.PathLike, Mapping)):
        size = image_size or meta_value(meta, "image_size")
        if size is None:
            raise ValueError("reconstruction_report needs image_size (or the weights' metadata) to load a datalist")
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        channels = meta_value(meta, "channels")
        return load_datalist_split(images, split, size=size, per_class=per_class, seed=seed,
                                   channels=int(channels) if channels else None, **preparation_of(meta))
    return ImageSet(np.asarray(images), np.zeros(len(images), dtype=np.int64), ["all"])


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _figures(p: np.ndarray, s: np.ndarray, m: np.ndarray | None, real_f: np.ndarray | None,
             recon_f: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(p)), "psnr": _mean(p), "psnr_std": float(np.std(p)), "ssim": _mean(s),
                           "ms_ssim": _mean(m) if m is not None else None}
    if real_f is not None and recon_f is not None:
        from medgen.metrics.distribution import fid

        try:
            out["fid"] = float(fid(real_f, recon_f))
        except TooFewImagesError as err:
            out["fid"], out["fid_error"] = None, str(err)
    return out


def reconstruction_report(network: torch.nn.Module, images: ImageSet | str | os.PathLike | Mapping | Any,
                          out_json: str | os.PathLike, meta: Mapping[str, Any] | None = None, split: str = "test",
                          per_class: int | None = None, image_size: int | None = None, features: Any = "inception",
                          grid_path: str | os.PathLike | None = None, grid_per_class: int = 4, batch_size: int = 16,
                          seed: int = 0, weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """Reconstruct held-out images and write PSNR, SSIM, MS-SSIM and Inception-FID (reconstructions vs
    originals), per class and overall, to ``out_json``; originals above reconstructions to ``grid_path``
    (default: ``out_json`` with ``.png``). Returns the report.

    Args:
        network: the ``AutoencoderKL`` (e.g. from :func:`~medgen.autoencoder.load_autoencoder`).
        images: an :class:`~medgen.metrics.image_sets.ImageSet` (images in [0, 1] with labels), a datalist (path or
            dict; its ``split`` is loaded as training prepared images, see ``meta``) or an ``(N, C, H, W)`` array
            in [0, 1] (one class).
        meta: the weights' metadata (image size, channels, resize mode and window of training).
        per_class: at most this many images per class from a datalist (None: all of the split).
        features: ``"inception"`` (the quality protocol's TF-Inception), ``"domain"``, a feature extractor, or
            None for no FID.
        weights: the weights file, recorded in the report.
    """
    from medgen.metrics.features import extract_features, get_extractor

    data = _image_set(images, meta, split, per_class, image_size, seed)
    originals = torch.from_numpy(np.ascontiguousarray(data.images)) * 2.0 - 1.0
    recon = (reconstruct(network, originals, batch_size) + 1.0) / 2.0
    real = (originals + 1.0) / 2.0
    size = int(min(real.shape[-2:]))
    ms_weights = ms_ssim_weights(size)
    psnr = PSNRMetric(max_val=1.0)(recon, real).reshape(-1).numpy()
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=SSIM_KERNEL)(recon, real).reshape(-1).numpy()
    ms_ssim = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=SSIM_KERNEL,
                                   weights=ms_weights)(recon, real).reshape(-1).numpy()
    extractor = get_extractor(features, channels=data.channels) if isinstance(features, str) else features
    real_f = recon_f = None
    if extractor is not None:
        real_f = extract_features(extractor, data)
        recon_f = extract_features(extractor, ImageSet(recon.numpy(), data.labels, data.classes), use_cache=False)
    per_class_figures = {}
    for label, name in enumerate(data.classes):
        idx = np.flatnonzero(data.labels == label)
        if len(idx):
            per_class_figures[name] = _figures(psnr[idx], ssim[idx], ms_ssim[idx],
                                               real_f[idx] if real_f is not None else None,
                                               recon_f[idx] if recon_f is not None else None)
    report = {
        "weights": str(weights) if weights else None,
        "split": split if isinstance(images, (str, os.PathLike, Mapping)) else None,
        "image_size": list(real.shape[-2:]), "channels": int(real.shape[1]), "n": int(len(real)),
        "overall": _figures(psnr, ssim, ms_ssim, real_f, recon_f),
        "per_class": per_class_figures,
        "metrics": {"psnr": "MONAI PSNRMetric, max_val 1", "ssim": f"MONAI SSIMMetric, gaussian {SSIM_KERNEL}",
                    "ms_ssim": f"MONAI MultiScaleSSIMMetric, gaussian {SSIM_KERNEL}, {len(ms_weights)} scales, "
                               f"weights {[round(w, 4) for w in ms_weights]}",
                    "fid": f"Frechet distance of {getattr(extractor, 'name', None)} features, reconstructions vs "
                           "originals" if extractor is not None else None},
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    grid = save_class_grid(_grid_rows(real, recon, data, grid_per_class),
                           grid_path or Path(out_json).with_suffix(".png"))
    report["grid"] = str(grid)
    write_json_atomic(report, out_json)
    return report


def _grid_rows(real: torch.Tensor, recon: torch.Tensor, data: ImageSet, per_class: int) -> dict[str, Sequence]:
    """Per class: a row of originals, then the row of their reconstructions (images in [-1, 1])."""
    rows: dict[str, Sequence] = {}
    for label, name in enumerate(data.classes):
        idx = np.flatnonzero(data.labels == label)[:per_class]
        if len(idx):
            rows[f"{name}"] = list(real[idx] * 2 - 1)
            rows[f"{name} recon"] = list(recon[idx] * 2 - 1)
    return rows
