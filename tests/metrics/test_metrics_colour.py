"""Colour (RGB) images keep their colour through every metric, on real PBC blood-cell images; grey stays grey."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medgen.metrics.image_sets import ImageSet, load_datalist_split, load_folder, load_samples_dir, write_samples_dir

SIZE = 32


@pytest.fixture(scope="module")
def colour_sets(blood_cells_datalist):
    train = load_datalist_split(blood_cells_datalist, "training", size=SIZE)
    test = load_datalist_split(blood_cells_datalist, "test", size=SIZE)
    spare = load_datalist_split(blood_cells_datalist, "spare", size=SIZE)
    return train, test, spare


def grey_version(s: ImageSet) -> ImageSet:
    luma = 0.299 * s.images[:, :1] + 0.587 * s.images[:, 1:2] + 0.114 * s.images[:, 2:]
    return ImageSet(luma, s.labels, s.classes)


def test_a_colour_datalist_loads_rgb_and_a_grey_one_grey(colour_sets, kermany_datalist):
    train = colour_sets[0]
    assert train.images.shape == (48, 3, SIZE, SIZE) and train.channels == 3
    assert np.abs(train.images[:, 0] - train.images[:, 2]).mean() > 0.05  # stained cells: R and B differ
    # Kermany JPEGs are RGB files holding grey pixels: a grey set, as before
    grey = load_datalist_split(kermany_datalist, "training", size=SIZE, per_class=3)
    assert grey.channels == 1
    asked = load_datalist_split(kermany_datalist, "training", size=SIZE, per_class=3, channels=1)
    assert np.abs(grey.images - asked.images).max() < 1e-5 and grey.fingerprint == asked.fingerprint


def test_a_folder_mixing_grey_and_colour_files_is_brought_to_its_mode_with_one_line(tmp_path, blood_cells_root,
                                                                                     caplog):
    files = sorted((blood_cells_root / "eosinophil").glob("*.jpg"))[:4]
    for name, grey_ones in (("mostly_colour", 1), ("mostly_grey", 3)):
        folder = tmp_path / name / "eosinophil"
        folder.mkdir(parents=True)
        for i, f in enumerate(files):
            with Image.open(f) as im:
                (im.convert("L") if i < grey_ones else im.convert("RGB")).save(folder / f"{i}.png")
    caplog.set_level(logging.WARNING, logger="medgen.metrics.image_sets")
    colour = load_folder(tmp_path / "mostly_colour", size=SIZE)
    assert colour.channels == 3
    grey = load_folder(tmp_path / "mostly_grey", size=SIZE)
    assert grey.channels == 1
    lines = [r.getMessage() for r in caplog.records if "mixes" in r.getMessage()]
    assert len(lines) == 2
    assert "3 colour and 1 grey" in lines[0] and "1 grey images repeated to RGB" in lines[0]
    assert "1 colour and 3 grey" in lines[1] and "1 colour images converted to grey" in lines[1]
    # the set's own mode can also be asked for: the colour files as grey
    assert load_folder(tmp_path / "mostly_colour", size=SIZE, channels=1).channels == 1


def test_colour_samples_folder_round_trip_keeps_rgb(tmp_path, colour_sets):
    test = colour_sets[1]
    folder = write_samples_dir(tmp_path / "s", test.images, test.labels, test.classes)
    with Image.open(next((folder / test.classes[0]).glob("*.png"))) as im:
        assert im.mode == "RGB"
    back = load_samples_dir(folder, size=SIZE)
    assert back.channels == 3 and np.abs(back.images - test.images).max() <= 0.5 / 255 + 1e-6


def test_rgb_and_its_grey_version_give_different_fid_features(colour_sets, fid_weights, isolated_cache):
    from medgen.metrics.distribution import fid
    from medgen.metrics.features import InceptionFeatures, extract_features

    train = colour_sets[0]
    one_per_class = train.subset([int(np.flatnonzero(train.labels == c)[0]) for c in range(8)])
    ex = InceptionFeatures(fid_weights)
    x = ex.preprocess(torch.from_numpy(one_per_class.images[:2]))
    assert x.shape == (2, 3, 299, 299) and (x[:, 0] - x[:, 2]).abs().mean() > 0.05  # RGB in, not grey repeated
    rgb = extract_features(ex, one_per_class)
    grey_set = grey_version(one_per_class)
    grey = extract_features(ex, grey_set)
    assert rgb.shape == grey.shape == (8, 2048)
    # the same cells in grey are far from themselves in colour: colour is part of what FID sees
    per_image = np.linalg.norm(rgb - grey, axis=1) / np.linalg.norm(rgb, axis=1)
    assert per_image.min() > 0.1
    assert fid(rgb, grey) > 1.0


def test_domain_classifier_takes_channels_and_refuses_the_other_kind(tmp_path, colour_sets):
    from medgen.metrics.classifier import load_classifier, save_classifier, train_classifier
    from medgen.metrics.features import DomainFeatures

    train = colour_sets[0]
    model = train_classifier(train.images, train.labels, 8, epochs=1, batch_size=16, seed=0)
    path = save_classifier(model, tmp_path / "domain.pt", train.classes, SIZE)
    assert load_classifier(path)[0].conv1.in_channels == 3
    ex = DomainFeatures(path)
    assert ex.channels == 3 and ex(train.images).shape == (48, 128)
    with pytest.raises(ValueError, match=r"takes RGB \(3 channels\) images, these are grey \(1 channel\)"):
        ex(grey_version(train).images)
    assert DomainFeatures(None, size=SIZE, channels=3).channels == 3


def test_rgb_histograms_have_three_channels_that_differ(colour_sets):
    from medgen.metrics.histograms import histogram_tests

    train, test, _ = colour_sets
    h = histogram_tests(train.images, test.images, bins=32)
    assert set(h["per_channel"]) == {"R", "G", "B"}
    r, g, b = (np.asarray(h["per_channel"][c]["hist_real"]) for c in "RGB")
    assert 0.5 * np.abs(r - b).sum() > 0.1 and 0.5 * np.abs(r - g).sum() > 0.1  # total variation between channels
    assert all(0 <= h["per_channel"][c]["p_value"] <= 1 for c in "RGB")
    # a grey set has no per-channel part: its figures are what they were
    assert "per_channel" not in histogram_tests(grey_version(train).images, grey_version(test).images, bins=32)


def test_ms_ssim_sees_colour(colour_sets):
    from medgen.metrics.diversity import ms_ssim_pairs

    a = colour_sets[0].images[:4]
    swapped = a[:, ::-1].copy()  # R and B exchanged: same shapes, other colours
    assert ms_ssim_pairs(a, a) == pytest.approx(np.ones(4), abs=1e-5)
    assert ms_ssim_pairs(a, swapped).max() < 0.99


def test_audit_flags_an_exact_colour_copy_not_a_colour_shifted_unrelated_image(tmp_path, colour_sets):
    from medgen.metrics.memorisation import closest_pairs_png, memorisation_audit

    train, test, spare = colour_sets
    copy = train.images[5]
    shifted = np.clip(spare.images[0] + np.array([0.08, -0.05, 0.04], np.float32)[:, None, None], 0, 1)
    generated = np.stack([copy, shifted])
    result = memorisation_audit(generated, train.images, test.images)
    assert result.flagged.tolist() == [True, False]
    # an exact copy is at distance 0 up to float32 rounding (matmul order varies with the thread count)
    assert result.nearest[0] == 5 and result.dist_pixel[0] < 1e-6
    # the same colour shift of the copy itself is still found (stain/white balance shifts do not hide a copy)
    tinted = np.clip(copy + np.array([0.05, -0.04, 0.03], np.float32)[:, None, None], 0, 1)
    again = memorisation_audit(np.stack([tinted, shifted]), train.images, test.images)
    assert again.flagged.tolist() == [True, False] and again.nearest[0] == 5
    png = closest_pairs_png(generated, train.images, result, tmp_path / "pairs.png", n=2)
    with Image.open(png) as im:
        assert im.mode == "RGB"
        pixels = np.asarray(im, dtype=np.float32)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 10
    with pytest.raises(ValueError, match="share channels and size"):
        memorisation_audit(generated, grey_version(train).images, test.images)


def _gate_on(datalist, out):
    from medgen.metrics.commands import fit_gate_command
    from medgen.metrics.quality_gate import QualityGate

    assert fit_gate_command(str(datalist), str(out), size=SIZE, k=3) == 0
    return QualityGate.load(out)


@pytest.mark.slow
def test_quality_gate_fitted_on_colour_scores_colour_and_refuses_grey(tmp_path, colour_sets, blood_cells_datalist,
                                                                      kermany_datalist, isolated_cache, capsys):
    from medgen.metrics.commands import load_gate
    from medgen.metrics.quality_gate import generate_until_pass

    gate = _gate_on(blood_cells_datalist, tmp_path / "colour_gate.npz")
    assert "RGB images" in capsys.readouterr().out
    assert gate.channels == 3 and json.loads((tmp_path / "colour_gate.npz.json").read_text())["channels"] == 3
    gate, extractor, info = load_gate(tmp_path / "colour_gate.npz")
    assert info["channels"] == 3 and extractor.channels == 3
    test = colour_sets[1]
    real = torch.from_numpy(test.images) * 2 - 1

    def colour(labels, seeds):  # real held-out colour cells stand in for a colour model's output
        return real[[s % len(real) for s in seeds]]

    out = generate_until_pass(colour, [0, 1, 2, 3], gate, extractor, max_rounds=10)
    assert out["images"].shape == (4, 3, SIZE, SIZE) and out["rejection_rate"] < 0.5  # real colour cells pass
    with pytest.raises(ValueError, match=r"fitted on colour \(3 channels\) images but these are grey"):
        generate_until_pass(lambda labels, seeds: real[: len(labels)].mean(1, keepdim=True), [0], gate, extractor)

    grey_gate = _gate_on(kermany_datalist, tmp_path / "grey_gate.npz")
    assert grey_gate.channels == 1 and "channels" not in grey_gate.meta  # grey gates are written as before
    grey_gate, grey_extractor, _ = load_gate(tmp_path / "grey_gate.npz")
    with pytest.raises(ValueError, match=r"fitted on grey \(1 channel\) images but these are colour"):
        generate_until_pass(colour, [0], grey_gate, grey_extractor)
