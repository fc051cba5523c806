import json

import numpy as np
import pytest
from PIL import Image

from medgen.metrics.errors import ImageSetError
from medgen.metrics.image_sets import (
    ImageSet,
    load_datalist_split,
    load_folder,
    load_samples_dir,
    to_common_form,
    write_samples_dir,
)


def test_rgb_uint8_is_brought_to_grey_float_when_asked():
    x = np.zeros((2, 3, 8, 8), np.uint8)
    x[:, 0] = 255  # pure red -> grey 1/3
    out = to_common_form(x, channels=1)
    assert out.shape == (2, 1, 8, 8) and out.dtype == np.float32
    assert out.max() == pytest.approx(1 / 3, abs=1e-6)


def test_rgb_stays_rgb_and_grey_stays_grey_by_default():
    x = np.zeros((2, 3, 8, 8), np.uint8)
    x[:, 0] = 255
    out = to_common_form(x)
    assert out.shape == (2, 3, 8, 8) and out[:, 0].min() == 1.0 and out[:, 1:].max() == 0.0
    assert to_common_form(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 1, 8, 8)
    assert to_common_form(np.zeros((2, 1, 8, 8), np.float32), channels=3).shape == (2, 3, 8, 8)


def test_minus_one_to_one_is_rescaled_and_resized():
    x = np.full((1, 1, 32, 32), -1.0, np.float32)
    x[..., :16] = 1.0
    out = to_common_form(x, size=16)
    assert out.shape == (1, 1, 16, 16) and out.min() == 0.0 and out.max() == 1.0


def test_unsupported_channel_count_is_refused_clearly():
    with pytest.raises(ImageSetError, match="1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels, got 2"):
        to_common_form(np.zeros((1, 2, 8, 8)))


def test_samples_folder_round_trip(tmp_path, rng):
    imgs = rng.random((6, 1, 32, 32)).astype(np.float32)
    write_samples_dir(tmp_path / "s", imgs, [0, 1, 0, 1, 0, 1], ["NORMAL", "PNEUMONIA"], extra={"sampler": "ddim"})
    lines = (tmp_path / "s" / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    assert rec["class"] == "PNEUMONIA" and rec["label"] == 1 and rec["sampler"] == "ddim"
    s = load_samples_dir(tmp_path / "s", size=32)
    assert s.classes == ["NORMAL", "PNEUMONIA"] and s.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert np.abs(s.images - imgs).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG quantisation only


def test_images_of_different_sizes_and_modes_come_out_in_one_form(tmp_path):
    (tmp_path / "A").mkdir()
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))  # not constant: constant images are left out
    Image.fromarray(np.stack([ramp[:40, :50]] * 3, -1), "RGB").save(tmp_path / "A" / "a.png")
    Image.fromarray(ramp, "L").save(tmp_path / "A" / "b.jpg")
    s = load_folder(tmp_path, size=32)
    assert s.images.shape == (2, 1, 32, 32) and s.classes == ["A"]


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "A").mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "A" / "a.png")  # not constant
    first = load_folder(tmp_path, size=8).fingerprint
    import os

    os.utime(tmp_path / "A" / "a.png", ns=(1, 1))
    assert load_folder(tmp_path, size=8).fingerprint != first


def test_npz_items_are_loaded(tmp_path):
    arr = (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28)
    np.savez(tmp_path / "x.npz", train_images=arr)
    items = [
        {"image": str(tmp_path / "x.npz"), "npz_key": "train_images", "npz_index": i, "label": i % 2} for i in (0, 2)
    ]
    dl = {"classes": ["a", "b"], "training": items}
    s = load_datalist_split(dl, "training", size=28)
    assert s.images.shape == (2, 1, 28, 28)
    assert np.allclose(s.images[1, 0], arr[2] / 255.0, atol=1e-6)


def test_missing_split_is_a_clear_error():
    with pytest.raises(ImageSetError, match="no items in split"):
        load_datalist_split({"classes": ["a"], "training": []}, "training")


def test_subset_and_class_selection(rng):
    s = ImageSet(rng.random((4, 1, 8, 8)), [0, 1, 1, 0], ["a", "b"])
    assert len(s.of_class(1)) == 2 and s.of_class(1).fingerprint != s.fingerprint


@pytest.mark.integration
def test_pneumoniamnist_npz_items_load(pneumoniamnist_npz):
    path = pneumoniamnist_npz
    items = [{"image": str(path), "npz_key": "test_images", "npz_index": i, "label": 0} for i in range(4)]
    s = load_datalist_split({"classes": ["normal", "pneumonia"], "test": items}, "test", size=64)
    assert s.images.shape == (4, 1, 64, 64) and 0 <= s.images.min() < s.images.max() <= 1
