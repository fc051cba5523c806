"""The latent cache: one split of a datalist encoded once by the frozen autoencoder, kept in one file.

Images go through the pixel bundles' MONAI pipeline (:func:`medgen.data.transforms.diffusion_transforms` in a
:class:`medgen.data.dataset.SkipFailedCacheDataset`, a chunk at a time so memory stays flat) and the autoencoder's
``encode`` gives each image's posterior mean and standard deviation, stored with the labels and a record of what they
came from (autoencoder weights sha256, fingerprint of the split's items, image size, channels, preprocessing). A later
run whose record matches loads the file instead of encoding; any difference re-encodes, and the log says which.

The scale factor is MONAI's rule (``scale_factor = 1 / std(z)`` of latents sampled as
``AutoencoderKL.encode_stage_2_inputs`` samples them, as in the ``LatentDiffusionInferer`` tutorials and the Model
Zoo's ``brats_mri_axial_slices_generative_diffusion``), applied to one posterior sample (fixed seed) of the first
``scale_images`` images of the split in datalist order (all of them by default) rather than to the first shuffled
training batch, so it does not depend on the loader's shuffling.

:meth:`LatentCache.dataset` is a MONAI ``Dataset`` of ``{"image": z * scale_factor, "label": label}`` with ``z`` drawn
from the posterior afresh at every access (what ``LatentDiffusionInferer`` does when it encodes a batch), so medgen's
training glue (``ConditionalDiffusionPrepareBatch``, ``ConditionalDiffusionInferer``, ``DSMPrepareBatch``,
``SupervisedTrainer``) trains on latents as it trains on images. MONAI caches images, not latents; this is that gap.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Randomizable, Transform

from medgen.data.dataset import LoadError, SkipFailedCacheDataset
from medgen.data.transforms import diffusion_transforms
from medgen.fileio import torch_save_atomic
from medgen.latent.checks import AutoencoderFacts, LatentConfigError, check_latent_config
from medgen.networks.weights_meta import datalist_fingerprint, differences, plain, sha256_of

logger = logging.getLogger(__name__)

CACHE_FORMAT = "medgen.latent_cache/1"
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class ScaledLatentd(Randomizable, Transform):
    """``{"z_mu", "z_sigma", "label"}`` -> ``{"image": z * scale_factor, "label"}``.

    ``z = z_mu + z_sigma * eps`` with ``eps`` drawn from this transform's generator (MONAI's ``set_determinism``
    seeds it), as ``AutoencoderKL.encode_stage_2_inputs`` samples; ``sample_posterior=False`` uses the mean.
    """

    def __init__(self, scale_factor: float, sample_posterior: bool = True) -> None:
        self.scale_factor = float(scale_factor)
        self.sample_posterior = sample_posterior
        self._eps: np.ndarray | None = None

    def randomize(self, data: Sequence[int]) -> None:
        self._eps = self.R.standard_normal(tuple(data)).astype(np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        z = data["z_mu"].float()
        if self.sample_posterior:
            self.randomize(z.shape)
            z = z + data["z_sigma"].float() * torch.from_numpy(self._eps)
        return {"image": z * self.scale_factor, "label": torch.as_tensor(data["label"], dtype=torch.long)}


class LatentCache:
    """Latents of one datalist split, encoded once by a frozen ``AutoencoderKL`` and reused while nothing changed.

    Nothing is read or encoded until a value is asked for (:attr:`scale_factor`, :meth:`dataset`, ...).

    Args:
        path: the cache file (e.g. ``<run>/latents_training.pt``); written atomically.
        autoencoder: the MONAI ``AutoencoderKL`` (set to eval; never trained here).
        datalist: the MONAI datalist (``{"classes": ..., "training": [{"image", "label"}, ...]}``).
        image_size: pixel size the images are brought to before encoding.
        channels: image channels.
        autoencoder_weights: the autoencoder's weights file (its sha256 is recorded; named in errors).
        autoencoder_sha256: the sha256 of those weights, when already known (else computed from the file).
        split: the datalist split to encode.
        resize_mode, window, preset: as :func:`~medgen.data.transforms.diffusion_transforms`.
        batch_size: images per encoder pass.
        device: where the autoencoder runs.
        num_workers: threads that load images.
        chunk_size: images decoded and held at once.
        scale_images: images whose latents set the scale factor (first ones of the split); None: all.
        storage_dtype: ``float16`` (half the file) or ``float32``.
        seed: seed of the posterior sample the scale factor is measured on.
    """

    def __init__(self, path: str | Path, autoencoder: torch.nn.Module, datalist: Mapping[str, Any],
                 image_size: int | Sequence[int], channels: int = 1, autoencoder_weights: str | Path | None = None,
                 autoencoder_sha256: str | None = None, split: str = "training", resize_mode: str = "crop",
                 window: Sequence[float] | None = None, preset: str | None = None, batch_size: int = 16,
                 device: str | torch.device = "cpu", num_workers: int = 0, chunk_size: int = 256,
                 scale_images: int | None = None, storage_dtype: str = "float16", seed: int = 0) -> None:
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
        if split not in datalist:
            raise LatentConfigError(f"the datalist has no split {split!r} (it has {', '.join(map(str, datalist))})")
        if autoencoder_weights is None and autoencoder_sha256 is None:
            raise ValueError("LatentCache needs autoencoder_weights (a file) or autoencoder_sha256 to know whether "
                             "cached latents are of this autoencoder")
        self.path = Path(path)
        self.autoencoder = autoencoder
        self.facts = AutoencoderFacts.of(autoencoder, autoencoder_weights)
        self.datalist = datalist
        self.split = split
        self.image_size = (int(image_size),) * 2 if isinstance(image_size, int) else tuple(map(int, image_size))
        self.channels = int(channels)
        self.autoencoder_weights = Path(autoencoder_weights) if autoencoder_weights else None
        self._sha256 = autoencoder_sha256
        self.preprocessing = {"resize_mode": resize_mode, "window": plain(window), "window_preset": preset}
        self.batch_size, self.device, self.num_workers = int(batch_size), torch.device(device), int(num_workers)
        self.chunk_size = max(1, int(chunk_size))
        self.scale_images = None if scale_images is None else max(1, int(scale_images))
        self.storage_dtype, self.seed = storage_dtype, int(seed)
        self.encoded = False  # True once this object has (re-)encoded the split instead of reading the file
        self._data: dict[str, Any] | None = None

    # ---- what the latents come from ---------------------------------------------------------------------------
    @property
    def autoencoder_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_of(self.autoencoder_weights)  # type: ignore[arg-type]
        return self._sha256

    def source(self) -> dict[str, Any]:
        """What must match for the file's latents to be reused."""
        items = list(self.datalist[self.split])
        return plain({
            "autoencoder_sha256": self.autoencoder_sha256,
            "latent_channels": self.facts.latent_channels,
            "downsampling_factor": self.facts.downsampling_factor,
            "datalist_sha256": datalist_fingerprint({"classes": self.datalist.get("classes"), "training": items}),
            "split": self.split,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "preprocessing": self.preprocessing,
            "scale_images": self.scale_images,
            "storage_dtype": self.storage_dtype,
            "seed": self.seed,
        })

    # ---- the cached values --------------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """``{"meta", "z_mu", "z_sigma", "labels"}``: from the file when it matches, else encoded (and written)."""
        if self._data is None:
            check_latent_config(self.facts, self.image_size, None, channels=self.channels,
                                config_file=f"the latent cache settings of {self.path}")
            reason = self._stale_reason()
            if reason is None:
                logger.info("latent cache %s: reusing %d latents (autoencoder %s..., same data)", self.path,
                            len(self._data["labels"]), self.autoencoder_sha256[:12])  # type: ignore[index]
            else:
                logger.info("latent cache %s: encoding the %s split (%s)", self.path, self.split, reason)
                self._data = self._encode()
                torch_save_atomic(self._data, self.path)
                self.encoded = True
        return self._data  # type: ignore[return-value]

    def _stale_reason(self) -> str | None:
        """None when the file holds latents of this source (then loaded into ``_data``), else why not."""
        if not self.path.is_file():
            return "no cache file yet"
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            meta = data["meta"]
        except Exception as err:  # noqa: BLE001 - any unreadable cache is encoded again
            return f"the file cannot be read: {' '.join(str(err).split())[:120]}"
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            return "the file is not a medgen latent cache"
        diffs = differences(meta.get("source", {}), self.source(), labels=("cache", "now"))
        if diffs:
            return "changed: " + "; ".join(diffs)
        self._data = data
        return None

    @property
    def meta(self) -> dict[str, Any]:
        return self.load()["meta"]

    @property
    def scale_factor(self) -> float:
        """``1 / std`` of the latents (MONAI's rule; see the module docs for which latents)."""
        return float(self.meta["scale_factor"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["latent_shape"])

    @property
    def labels(self) -> torch.Tensor:
        return self.load()["labels"]

    def __len__(self) -> int:
        return len(self.labels)

    def scaled_means(self) -> torch.Tensor:
        """Posterior means times the scale factor, ``(N, C, h, w)`` fp32 (e.g. NCSNv2's sigma_max:
        :func:`medgen.diffusion.ncsn.max_pairwise_distance`)."""
        return self.load()["z_mu"].float() * self.scale_factor

    def dataset(self, sample_posterior: bool = True) -> Dataset:
        """MONAI ``Dataset`` of ``{"image": z * scale_factor, "label"}`` (see :class:`ScaledLatentd`)."""
        data = self.load()
        records = [{"z_mu": mu, "z_sigma": sigma, "label": int(label)}
                   for mu, sigma, label in zip(data["z_mu"], data["z_sigma"], data["labels"].tolist())]
        return Dataset(records, transform=ScaledLatentd(self.scale_factor, sample_posterior))

    def check_scale_factor(self, scale_factor: float | None, config_file: str = "the diffusion config") -> None:
        """A configured ``scale_factor`` (e.g. of diffusion weights being resumed) must be this data's."""
        check_latent_config(self.facts, self.image_size, None, scale_factor=scale_factor,
                            data_scale_factor=self.scale_factor, config_file=config_file,
                            scale_source=f"the latent cache {self.path}")

    # ---- encoding -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode(self) -> dict[str, Any]:
        items = list(self.datalist[self.split])
        transform = diffusion_transforms(self.image_size, self.channels, window=self.preprocessing["window"],
                                         preset=self.preprocessing["window_preset"],
                                         resize_mode=self.preprocessing["resize_mode"])
        autoencoder = self.autoencoder.to(self.device).eval()
        dtype = STORAGE_DTYPES[self.storage_dtype]
        mus, sigmas, labels, dropped = [], [], [], []
        for start in range(0, len(items), self.chunk_size):
            chunk = items[start:start + self.chunk_size]
            try:
                ds = SkipFailedCacheDataset(chunk, transform, cache_rate=1.0, num_workers=self.num_workers,
                                            progress=False)
            except LoadError as err:
                logger.warning("latent cache %s: none of items %d-%d loaded: %s", self.path, start,
                               start + len(chunk) - 1, err)
                dropped.extend(str(it.get("image")) for it in chunk)
                continue
            dropped.extend(path for path, _ in ds.failures)
            for batch in DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0):
                z_mu, z_sigma = autoencoder.encode(batch["image"].to(self.device).float())
                mus.append(z_mu.to("cpu", dtype))
                sigmas.append(z_sigma.to("cpu", dtype))
                labels.append(torch.as_tensor(batch["label"]).long().reshape(-1).cpu())
        if not mus:
            raise LoadError(f"latent cache {self.path}: none of the {len(items)} images of the {self.split} split "
                            "could be loaded")
        z_mu, z_sigma = torch.cat(mus), torch.cat(sigmas)
        scale, used = self._scale_factor(z_mu, z_sigma)
        from medgen import __version__

        meta = {
            "format": CACHE_FORMAT,
            "source": self.source(),
            "autoencoder_file": self.autoencoder_weights.name if self.autoencoder_weights else None,
            "latent_shape": list(z_mu.shape[1:]),
            "num_latents": len(z_mu),
            "dropped": dropped,
            "scale_factor": scale,
            "scale_factor_rule": f"1 / std of one posterior sample (seed {self.seed}) of the latents of the first "
                                 f"{used} images of the {self.split} split, in datalist order",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "medgen_version": __version__,
        }
        logger.info("latent cache %s: %d latents of shape %s, scale factor %.6g (%s)", self.path, len(z_mu),
                    meta["latent_shape"], scale, meta["scale_factor_rule"])
        return {"meta": meta, "z_mu": z_mu, "z_sigma": z_sigma, "labels": torch.cat(labels)}

    def _scale_factor(self, z_mu: torch.Tensor, z_sigma: torch.Tensor) -> tuple[float, int]:
        """MONAI's ``1 / torch.std(z)`` over the first ``scale_images`` latents, accumulated in float64 chunks."""
        n = len(z_mu) if self.scale_images is None else min(self.scale_images, len(z_mu))
        generator = torch.Generator().manual_seed(self.seed)
        total, total_sq, count = 0.0, 0.0, 0
        for start in range(0, n, 256):
            mu, sigma = z_mu[start:min(n, start + 256)].double(), z_sigma[start:min(n, start + 256)].double()
            z = mu + sigma * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
            total, total_sq, count = total + float(z.sum()), total_sq + float((z * z).sum()), count + z.numel()
        std = ((total_sq - total * total / count) / max(count - 1, 1)) ** 0.5
        if not std > 0:
            raise LatentConfigError(f"the autoencoder {self.facts.path or ''} gives constant latents on the "
                                    f"{self.split} split (std {std}): it cannot be used for latent diffusion")
        return 1.0 / std, n


def encode_on_rank_zero(cache: LatentCache) -> LatentCache:
    """Load (encoding if needed) ``cache`` on rank 0 first, then on the other ranks of a distributed run (ignite's
    ``idist.one_rank_first``), so one process encodes and the others read its file; without a group, just load."""
    import ignite.distributed as idist

    with idist.one_rank_first(rank=0):
        cache.load()
    return cache
