"""Colour on reading: RGB kept for a colour model, and every odd input (RGBA, palette, CMYK, grey files for a colour
model, class folders mixing grey and colour) converted with a logged, counted decision, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from PIL import Image

from medgen.data.datalist import DatalistError, build_datalist, summary_table
from medgen.data.dataset import SkipFailedCacheDataset
from medgen.data.loaders import LoadMedicalImage
from medgen.data.transforms import diffusion_transforms

CMYK, RGBA, PALETTE = "CMYK converted to RGB", "RGBA converted to RGB (alpha dropped)", \
    "palette (P) converted to RGB through its palette"
LUMA, REPLICATED = "colour converted to grey (ITU-R 601 luma)", "grey replicated to 3 channels"


def _cell(seed: int, h: int = 40, w: int = 44) -> np.ndarray:
    """A stained-cell-like RGB picture: pink background, a purple disc off the centre, noise (channels differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2 - 2) ** 2 + (xx - w / 2 + 3) ** 2 < (h / 4) ** 2
    rgb = np.where(disc[..., None], [110, 60, 150], [235, 190, 200]) + rng.normal(0, 12, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture()
def mixed_tree(tmp_path: Path) -> Path:
    """``stained/``: 3 RGB JPEGs, 1 RGBA PNG, 1 palette PNG, 1 CMYK JPEG and 2 grey PNGs (a mixed folder);
    ``grey/``: 3 grey PNGs. Every file is a real image written by PIL."""
    tree = tmp_path / "cells"
    stained, grey = tree / "stained", tree / "grey"
    stained.mkdir(parents=True)
    grey.mkdir()
    for i in range(3):
        Image.fromarray(_cell(i)).save(stained / f"rgb_{i}.jpg", quality=95)
    rgb = Image.fromarray(_cell(10))
    alpha = Image.fromarray(np.linspace(0, 255, 40 * 44).reshape(40, 44).astype(np.uint8))
    Image.merge("RGBA", [*rgb.split(), alpha]).save(stained / "rgba.png")
    rgb.quantize(64).save(stained / "palette.png")
    rgb.convert("CMYK").save(stained / "cmyk.jpg", quality=95)
    for i in range(2):
        Image.fromarray(_cell(20 + i)).convert("L").save(stained / f"grey_{i}.png")
    for i in range(3):
        Image.fromarray(_cell(30 + i)).convert("L").save(grey / f"grey_{i}.png")
    return tree


def test_a_colour_model_counts_every_conversion_and_the_mixed_folder(mixed_tree: Path, caplog):
    with caplog.at_level(logging.INFO, logger="medgen.data.datalist"):
        datalist, summary = build_datalist(mixed_tree, channels=3, val_fraction=0, test_fraction=0)
    assert len(datalist["training"]) == 11 and not summary.skipped  # every file kept
    assert dict(summary.converted) == {CMYK: 1, RGBA: 1, PALETTE: 1, REPLICATED: 5}
    assert summary.warnings == ["class 'stained' mixes 2 grey and 6 colour images: the grey ones are replicated to "
                                "3 channels (this model is RGB)"]
    assert "reading converts 5 file(s): grey replicated to 3 channels" in caplog.text
    table = summary_table(datalist, summary)
    for line in ("converted on reading: 1 CMYK converted to RGB", "converted on reading: 5 grey replicated to 3 "
                 "channels", "warning: class 'stained' mixes 2 grey and 6 colour images"):
        assert line in table


def test_a_grey_model_converts_colour_with_luma_and_says_so(mixed_tree: Path):
    _, summary = build_datalist(mixed_tree, channels=1, val_fraction=0, test_fraction=0)
    assert dict(summary.converted) == {CMYK: 1, RGBA: 1, PALETTE: 1, LUMA: 6}
    assert summary.warnings == ["class 'stained' mixes 2 grey and 6 colour images: the colour ones are converted to "
                                "grey with ITU-R 601 luma (this model is grey)"]


def test_without_a_channel_count_both_outcomes_are_named(mixed_tree: Path):
    _, summary = build_datalist(mixed_tree, val_fraction=0, test_fraction=0)
    assert dict(summary.converted) == {CMYK: 1, RGBA: 1, PALETTE: 1}
    assert "a grey model reads the colour ones as grey (ITU-R 601 luma), a colour model replicates" in \
        summary.warnings[0]


def test_grey_pictures_saved_as_rgb_are_grey_not_a_mixed_folder(tmp_path: Path):
    """Many X-ray and MRI sets store grey pictures as RGB JPEGs beside grey ones: that is not a mixed folder."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        grey = Image.fromarray(_cell(ord(name))).convert("L")
        grey.save(tmp_path / name / "stored_grey.png")
        grey.convert("RGB").save(tmp_path / name / "stored_rgb.jpg", quality=90)
    _, summary = build_datalist(tmp_path, channels=1, val_fraction=0, test_fraction=0)
    assert summary.warnings == [] and not summary.converted
    _, summary = build_datalist(tmp_path, channels=3, val_fraction=0, test_fraction=0)
    assert summary.warnings == [] and dict(summary.converted) == {REPLICATED: 2}


def test_the_mixed_folder_trains_in_colour(mixed_tree: Path):
    """Each kind of file loads to 3 channels of what PIL's conversion gives; the mixed set collates into batches."""
    datalist, _ = build_datalist(mixed_tree, channels=3, val_fraction=0, test_fraction=0)
    load = LoadMedicalImage(channels=3)
    stained = mixed_tree / "stained"
    for name, mode in (("rgba.png", "RGBA"), ("palette.png", "P"), ("cmyk.jpg", "CMYK")):
        with Image.open(stained / name) as im:
            assert im.mode == mode
            expected = np.moveaxis(np.asarray(im.convert("RGB"), np.float32) / 255.0, -1, 0)
        np.testing.assert_allclose(load(str(stained / name)).numpy(), expected, atol=1e-6)
    grey = load(str(stained / "grey_0.png")).numpy()
    assert grey.shape == (3, 40, 44) and np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    dataset = SkipFailedCacheDataset(datalist["training"], diffusion_transforms(32, channels=3), num_workers=0)
    assert len(dataset) == 11 and not dataset.skipped
    batches = list(DataLoader(dataset, batch_size=4))
    assert [tuple(b["image"].shape) for b in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (3, 3, 32, 32)]


def test_a_grey_model_reads_colour_as_itu_601_luma(mixed_tree: Path):
    path = mixed_tree / "stained" / "rgba.png"
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
    grey = LoadMedicalImage(channels=1)(str(path)).numpy()
    np.testing.assert_allclose(grey[0], 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2], atol=1e-5)


def test_split_fractions_must_leave_a_training_share(mixed_tree: Path):
    with pytest.raises(DatalistError, match="val_fraction 0.5 and test_fraction 0.5 must each be in"):
        build_datalist(mixed_tree, val_fraction=0.5, test_fraction=0.5)


def _pbc_image(shared_data: Path) -> Path:
    folder = shared_data / "blood_cells_pbc" / "monocyte"
    if not folder.is_dir():
        pytest.skip(f"PBC blood cell images not found at {folder}")
    return sorted(folder.glob("*.jpg"))[0]


@pytest.mark.parametrize("size", [64, 128])
def test_a_real_blood_cell_stays_rgb_at_64_and_128(shared_data: Path, size: int):
    path = _pbc_image(shared_data)
    image = diffusion_transforms(size, channels=3)({"image": str(path), "label": 0})["image"]
    assert tuple(image.shape) == (3, size, size) and -1.0 <= float(image.min()) < float(image.max()) <= 1.0
    assert float((image[0] - image[2]).abs().mean()) > 0.05  # colour, not grey repeated
    grey = diffusion_transforms(size, channels=1)({"image": str(path), "label": 0})["image"]
    assert tuple(grey.shape) == (1, size, size)


def test_flips_and_quarter_turns_cover_the_8_symmetries_of_the_square(shared_data: Path):
    path = _pbc_image(shared_data)
    item = {"image": str(path), "label": 0}
    plain = diffusion_transforms(32, channels=3)(item)["image"]
    symmetries = [torch.rot90(x, k, dims=(1, 2)) for x in (plain, plain.flip(2)) for k in range(4)]
    augmented = diffusion_transforms(32, channels=3, random_flip=True, random_rotate90=True)
    augmented.set_random_state(seed=0)
    seen = []
    for _ in range(80):
        out = augmented(item)["image"]
        (match,) = [i for i, s in enumerate(symmetries) if torch.equal(out, s)]
        seen.append(match)
    assert set(seen) == set(range(8))
    assert max(seen.count(i) for i in range(8)) < 25  # roughly uniform (10 expected each)


def test_medgen_data_index_prints_the_decisions(mixed_tree: Path, tmp_path: Path, capsys):
    from medgen.cli import main

    assert main(["data", "index", str(mixed_tree), "--out", str(tmp_path / "datalist.json"), "--channels", "3",
                 "--val-fraction", "0", "--test-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "converted on reading: 1 RGBA converted to RGB (alpha dropped)" in out
    assert "converted on reading: 5 grey replicated to 3 channels" in out
    assert "warning: class 'stained' mixes 2 grey and 6 colour images" in out
