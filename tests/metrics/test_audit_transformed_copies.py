"""The memorisation audit finds transformed copies of real training images and leaves real held-out images alone.

Real chest X-rays (Kermany, 64 px): 60 training images; copies of every one of them made by each transformation
below with MONAI transforms (flips, crops resized back, rotations, shifts, brightness/contrast/gamma) or by noise
and JPEG re-compression, each rounded to 8 bits as ``medgen sample`` writes it; 60 real held-out images give the
reference distances and 80 other real held-out images are the negatives. Prints the detection table.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from medgen.metrics.image_sets import datalist_from_class_folders, load_datalist_split
from medgen.metrics.memorisation import memorisation_audit

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _crop_resized(x: np.ndarray, scale: float, rng: np.random.Generator, centred: bool) -> np.ndarray:
    from monai.transforms import Resize, SpatialCrop

    h, w = x.shape[-2:]
    ch, cw = round(scale * h), round(scale * w)
    y0 = (h - ch) // 2 if centred else int(rng.integers(0, h - ch + 1))
    x0 = (w - cw) // 2 if centred else int(rng.integers(0, w - cw + 1))
    crop = SpatialCrop(roi_start=(y0, x0), roi_end=(y0 + ch, x0 + cw))(x)
    return Resize((h, w), mode="bilinear")(crop)


def _jpeg(x: np.ndarray, quality: int = 40) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32)[None] / 255


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def _transformations() -> dict:
    from monai.transforms import AdjustContrast, Affine, Flip, Rotate, ScaleIntensityFixedMean, ShiftIntensity

    return {
        "exact copy": lambda x, r: x,
        "horizontal flip": lambda x, r: Flip(spatial_axis=1)(x),
        "vertical flip": lambda x, r: Flip(spatial_axis=0)(x),
        "centre crop 80-95%, resized": lambda x, r: _crop_resized(x, r.uniform(0.8, 0.95), r, True),
        "off-centre crop 80-95%, resized": lambda x, r: _crop_resized(x, r.uniform(0.8, 0.95), r, False),
        "rotation 3-10 deg": lambda x, r: Rotate(np.deg2rad(_sign(r) * r.uniform(3, 10)), padding_mode="zeros")(x),
        "shift 2-4 px": lambda x, r: Affine(translate_params=(_sign(r) * r.uniform(2, 4), _sign(r) * r.uniform(2, 4)),
                                            padding_mode="zeros", image_only=True)(x),
        "brightness +-0.1-0.2": lambda x, r: ShiftIntensity(_sign(r) * r.uniform(0.1, 0.2))(x),
        "contrast x0.7-0.85 / x1.15-1.3": lambda x, r: ScaleIntensityFixedMean(
            factor=_sign(r) * r.uniform(0.15, 0.3))(x),
        "gamma 0.6-0.8 / 1.3-1.6": lambda x, r: AdjustContrast(
            gamma=r.uniform(0.6, 0.8) if r.random() < 0.5 else r.uniform(1.3, 1.6))(x),
        "gaussian noise sd 0.03": lambda x, r: x + r.normal(0, 0.03, x.shape),
        "JPEG quality 40": lambda x, r: _jpeg(x),
        "h-flip + crop 85-95% + brighter": lambda x, r: ShiftIntensity(0.1)(
            _crop_resized(Flip(spatial_axis=1)(x), r.uniform(0.85, 0.95), r, False)),
    }


def copies_of(images: np.ndarray, transform, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for x in images:
        y = transform(x.astype(np.float32), rng)
        y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, np.float32)
        out.append(np.round(np.clip(y, 0, 1) * 255) / 255)  # an 8-bit PNG, as the sampler writes
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def real_sets(kermany_root):
    dl = datalist_from_class_folders({"training": kermany_root / "train", "test": kermany_root / "test"},
                                     per_class=70, seed=3)
    train = load_datalist_split(dl, "training", size=64, per_class=30, seed=0)
    held = load_datalist_split(dl, "test", size=64)
    order = np.random.default_rng(0).permutation(len(held))
    return train.images, held.images[order[:60]], held.images[order[60:]]


def test_transformed_copies_are_flagged_and_real_held_out_images_are_not(real_sets, capsys):
    train, reference, negatives = real_sets
    assert len(train) == 60 and len(reference) == 60 and len(negatives) == 80
    transforms = _transformations()
    copies = [copies_of(train, t, seed=k) for k, t in enumerate(transforms.values())]
    generated = np.concatenate(copies + [negatives])
    t0 = time.perf_counter()
    result = memorisation_audit(generated, train, reference)
    seconds = time.perf_counter() - t0
    n = len(train)
    rows, rates = [], {}
    for k, name in enumerate(transforms):
        part = slice(k * n, (k + 1) * n)
        found = result.flagged[part]
        right = found & (result.nearest[part] == np.arange(n))
        rates[name] = right.mean()
        rows.append(f"{name:34s} {found.sum():3d}/{n}  {rates[name]:6.1%}  "
                    f"median aligned distance {np.median(result.dist_aligned[part]):.4f}")
    false_pos = result.flagged[len(transforms) * n:]
    with capsys.disabled():
        print(f"\nmemorisation audit on real chest X-rays (64 px): {n} training images, {len(reference)} held-out "
              f"reference, threshold (1st percentile) {result.threshold_aligned:.4f}")
        print(f"{'transformation':34s} flagged  rate (with the right source)")
        print("\n".join(rows))
        print(f"{'held-out real images (negatives)':34s} {false_pos.sum():3d}/{len(false_pos)}  "
              f"{false_pos.mean():6.1%} false positives")
        print(f"audit time for {len(generated)} generated + {len(reference)} reference against {n} training "
              f"images: {seconds:.1f} s")
    assert all(rate >= 0.9 for rate in rates.values()), rates
    assert false_pos.mean() <= 0.05
