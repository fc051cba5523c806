"""Evaluation reads real datalist items exactly as training does (same loader, same resize rule), on real images.

Training's side is the cxr_ddpm bundle's own ``train#preprocessing`` (parsed from train.yaml) inside training's
``SkipFailedCacheDataset``; evaluation's side is :func:`medgen.metrics.image_sets.load_datalist_split`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image
from synthetic_dicom import dicom_file

from medgen.data.dataset import SkipFailedCacheDataset
from medgen.metrics.errors import ImageSetError
from medgen.metrics.image_sets import load_datalist_split

REPO = Path(__file__).resolve().parents[2]
SIZE = 64


def training_preprocessing(resize_mode: str):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "cxr_ddpm" / "configs" / "train.yaml"))
    parser.update({"image_size": SIZE, "resize_mode": resize_mode})
    return parser.get_parsed_content("train#preprocessing")


@pytest.fixture(scope="module")
def mixed_datalist(kermany_root, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Real Kermany pixels as: a non-square PNG, its EXIF-rotated copy, a palette copy (and the RGB PNG of that
    palette's colours), a 16-bit DICOM, an npz item, and a truncated JPEG."""
    folder = tmp_path_factory.mktemp("mixed")
    sources = sorted((kermany_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:3]
    with Image.open(sources[0]) as im:
        assert im.size == (224, 224)  # the set is square: the non-square image is a real crop of one
        grey = im.convert("L")
    wide = grey.crop((0, 40, 224, 184))  # 224 x 144
    files = {"wide": folder / "wide.png", "exif": folder / "exif_rot.png", "palette": folder / "palette.png",
             "palette_rgb": folder / "palette_rgb.png", "dicom": folder / "image.dcm", "npz": folder / "images.npz",
             "corrupt": folder / "truncated.jpeg"}
    wide.save(files["wide"])
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display; the stored pixels are the upright image turned CCW
    wide.transpose(Image.Transpose.ROTATE_90).save(files["exif"], exif=exif)
    with Image.open(sources[1]) as im:
        rgb = im.convert("RGB").crop((10, 0, 214, 224))  # 204 x 224
    palette = rgb.quantize(colors=48)
    assert palette.mode == "P"
    palette.save(files["palette"])
    palette.convert("RGB").save(files["palette_rgb"])
    with Image.open(sources[2]) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint16)[:, 16:] * 16  # 224 x 208, 12-bit
    dicom_file(files["dicom"], pixels, modality="CR")
    stack = np.stack([np.asarray(grey), np.asarray(grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    np.savez(files["npz"], train_images=stack)
    files["corrupt"].write_bytes(sources[0].read_bytes()[:3000])
    items = [{"image": str(files[k]), "label": i % 2} for i, k in enumerate(("wide", "exif", "palette", "dicom"))]
    items.append({"image": str(files["npz"]), "npz_key": "train_images", "npz_index": 1, "label": 0})
    items.append({"image": str(files["palette_rgb"]), "label": 1})
    items.append({"image": str(files["corrupt"]), "label": 1})
    path = folder / "datalist.json"
    path.write_text(json.dumps({"classes": ["NORMAL", "PNEUMONIA"], "training": items}))
    return path, files


@pytest.mark.parametrize("resize_mode", ["crop", "pad"])
def test_evaluation_reads_every_item_as_training_does(mixed_datalist, resize_mode, caplog):
    path, files = mixed_datalist
    items = json.loads(path.read_text())["training"]
    with caplog.at_level(logging.WARNING):
        train = SkipFailedCacheDataset(items, transform=training_preprocessing(resize_mode), cache_rate=1.0,
                                       num_workers=0, progress=False)
        caplog.clear()
        real = load_datalist_split(path, "training", size=SIZE, resize_mode=resize_mode)

    # the truncated JPEG is left out, counted and named in one warning line; the rest load
    assert len(real) == len(items) - 1 == len(train)
    assert sum(real.skipped.values()) == 1 and [p for p, _ in real.failures] == [str(files["corrupt"])]
    assert real.skipped == train.skipped
    skipped_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(skipped_lines) == 1 and str(files["corrupt"]) in skipped_lines[0] and "\n" not in skipped_lines[0]

    expected = np.stack([(np.asarray(train[i]["image"]) + 1.0) / 2.0 for i in range(len(train))])
    assert real.images.shape == expected.shape == (len(items) - 1, 1, SIZE, SIZE)
    assert np.abs(real.images - expected).max() <= 1e-5, [float(np.abs(a - b).max())
                                                         for a, b in zip(real.images, expected)]
    assert real.labels.tolist() == [int(i["label"]) for i in items[:-1]]

    by_file = {Path(i.split(":")[0]).name: img[0] for i, img in zip(real.ids, real.images)}
    # EXIF orientation applied: the rotated copy is the upright image
    assert np.abs(by_file["exif_rot.png"] - by_file["wide.png"]).max() <= 1e-5
    # palette through its colours, not its indices
    assert np.abs(by_file["palette.png"] - by_file["palette_rgb.png"]).max() <= 1e-5
    # the aspect is kept: not the old stretch of the whole 224 x 144 image
    stretched = np.asarray(Image.open(files["wide"]).resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    assert np.abs(by_file["wide.png"] - stretched).mean() > 0.02
    if resize_mode == "pad":  # black bars above and below the 224 x 144 image
        assert by_file["wide.png"][:8].max() == 0.0 and by_file["wide.png"][SIZE // 2].max() > 0.2


def test_a_datalist_with_no_loadable_item_is_one_clear_error(mixed_datalist, tmp_path):
    _, files = mixed_datalist
    dl = {"classes": ["a"], "test": [{"image": str(files["corrupt"]), "label": 0},
                                     {"image": str(tmp_path / "gone.png"), "label": 0}]}
    with pytest.raises(ImageSetError, match="none of the 2 datalist items could be loaded") as err:
        load_datalist_split(dl, "test", size=SIZE)
    assert str(files["corrupt"]) in str(err.value) and "\n" not in str(err.value)


def test_preparation_keys_the_feature_cache(mixed_datalist):
    path, _ = mixed_datalist
    crop = load_datalist_split(path, "training", size=SIZE)
    pad = load_datalist_split(path, "training", size=SIZE, resize_mode="pad")
    assert crop.fingerprint != pad.fingerprint
    assert crop.fingerprint == load_datalist_split(path, "training", size=SIZE).fingerprint


def test_preparation_follows_the_weights_training_keys():
    from medgen.metrics.image_sets import preparation_of

    assert preparation_of(None) == {"resize_mode": "crop", "window": None, "preset": None}
    meta = {"classes": ["a", "b"], "config": {"resize_mode": "pad", "window": [40, 400], "window_preset": None}}
    assert preparation_of(meta) == {"resize_mode": "pad", "window": [40, 400], "preset": None}
