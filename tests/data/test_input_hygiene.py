"""Input hygiene: PIL modes converted as PIL does, bad files refused at index time with a reason, a file that
fails at load time dropped (never fatal, never SIGABRT), mixed sources collate, aspect kept on resize."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from malformed_corpus import bomb_png, dicom_file
from monai.data import DataLoader
from PIL import Image, ImageOps

from medgen.data.datalist import build_datalist, summary_table
from medgen.data.dataset import SkipFailedCacheDataset
from medgen.data.dicom import DicomReadError, read_dicom_image
from medgen.data.image_check import ImageLoadError, check_image_file
from medgen.data.loaders import LoadMedicalImage
from medgen.data.transforms import diffusion_transforms

REPO = Path(__file__).resolve().parents[2]


def _picture(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1)
    return rgb.astype(np.uint8)


def _modes(tmp_path: Path) -> dict[str, Path]:
    rgb = Image.fromarray(_picture())
    grey = rgb.convert("L")
    files = {
        "palette": ("png", rgb.quantize(32)),
        "grey_alpha": ("png", Image.merge("LA", [grey, Image.fromarray(np.full((48, 64), 90, np.uint8))])),
        "rgba": ("png", Image.merge("RGBA", [*rgb.split(), Image.fromarray(np.full((48, 64), 30, np.uint8))])),
        "cmyk": ("jpg", rgb.convert("CMYK")),
        "bilevel": ("png", grey.convert("1")),
    }
    out = {}
    for name, (ext, image) in files.items():
        out[name] = tmp_path / f"{name}.{ext}"
        image.save(out[name], quality=95) if ext == "jpg" else image.save(out[name])
    exif = rgb.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    out["exif"] = tmp_path / "exif.jpg"
    rgb.save(out["exif"], exif=exif, quality=95)
    return out


@pytest.mark.parametrize("name", ["palette", "grey_alpha", "rgba", "cmyk", "exif", "bilevel"])
def test_pil_modes_load_as_pil_converts_them(tmp_path, name):
    """Grey equals PIL's ``convert('L')`` and RGB its ``convert('RGB')``, after the EXIF orientation; the alpha
    channel is dropped, as PIL's own conversion does."""
    path = _modes(tmp_path)[name]
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
        want_l = np.asarray(upright.convert("L"), np.float32) / 255
        want_rgb = np.moveaxis(np.asarray(upright.convert("RGB"), np.float32), -1, 0) / 255
    grey = LoadMedicalImage(channels=1)(str(path)).numpy()
    colour = LoadMedicalImage(channels=3)(str(path)).numpy()
    assert grey.shape == (1, *want_l.shape) and colour.shape == want_rgb.shape
    assert np.abs(grey[0] - want_l).max() <= 1.01 / 255  # PIL rounds its integer luma; we keep floats
    assert np.abs(colour - want_rgb).max() <= 1e-6
    if name == "exif":
        assert grey.shape == (1, 64, 48)  # stored 48x64 landscape, displayed portrait
    if name == "palette":  # not the palette indices
        with Image.open(path) as im:
            assert not np.allclose(grey[0] * 255, np.asarray(im, np.float32), atol=2)


def test_sixteen_bit_scaled_by_its_range(tmp_path):
    values = (np.arange(40 * 50).reshape(40, 50) % 3000 + 500).astype(np.uint16)  # a 12-bit image in 16 bits
    Image.fromarray(values).save(tmp_path / "x16.png")
    Image.fromarray(values).save(tmp_path / "x16.tif")
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "x32.tif")
    want = (values - 500.0) / 1999.0  # its own range, 500..2499
    for name in ("x16.png", "x16.tif", "x32.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode in ("I;16", "I")
        out = LoadMedicalImage()(str(tmp_path / name)).numpy()[0]
        assert np.abs(out - want).max() < 1e-5, name


def test_index_finds_what_verify_misses(tmp_path):
    """Truncated JPEG (PIL's verify() passes it), NaN TIFF, constant PNG, 1x1 and a 400-megapixel PNG bomb:
    each refused with a reason and its file named, quickly and without a traceback."""
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_picture()).save(root / c / f"ok{i}.jpeg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(tmp_path / "n.jpeg")
    jpeg = (tmp_path / "n.jpeg").read_bytes()
    (root / "a" / "cut.jpeg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    with Image.open(root / "a" / "cut.jpeg") as im:
        im.verify()  # passes: verify() does not decode JPEG data
    nan = np.ones((32, 32), np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(root / "a" / "nan.tif")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "b" / "flat.png")
    Image.fromarray(np.full((1, 1), 7, np.uint8)).save(root / "b" / "dot.png")
    bomb_png(root / "b" / "bomb.png")
    assert (root / "b" / "bomb.png").stat().st_size < 1_000_000
    datalist, summary = build_datalist(root, val_fraction=0, test_fraction=0)
    assert len(datalist["training"]) == 6
    assert summary.skipped == {"truncated image": 1, "non-finite values": 1, "constant image": 1, "too small": 1,
                               "oversized image": 1}
    for name in ("cut.jpeg", "nan.tif", "flat.png", "dot.png", "bomb.png"):
        assert any(name in message for _, message in summary.errors), name
    table = summary_table(datalist, summary)
    assert "1 truncated image" in table and "1 oversized image" in table
    with pytest.raises(ImageLoadError, match="bomb.png.*400000000 pixels"):
        check_image_file(root / "b" / "bomb.png")


@pytest.mark.parametrize("slope", ["NaN", "0"])
def test_dicom_rescale_slope_nan_or_zero_is_an_error_naming_the_file(tmp_path, slope):
    path = tmp_path / f"slope_{slope}.dcm"
    dicom_file(path, (np.arange(64 * 64).reshape(64, 64) % 4000).astype(np.uint16), slope=slope)
    with pytest.raises(DicomReadError, match=f"slope_{slope}.dcm: RescaleSlope is") as err:
        read_dicom_image(path)
    assert err.value.reason == "bad_rescale"
    with pytest.raises(ImageLoadError, match=f"slope_{slope}.dcm"):
        LoadMedicalImage()(str(path))


def test_mixed_sources_collate(tmp_path, kermany):
    """Grey+alpha PNG, RGBA PNG, NIfTI slices, DICOM and JPEG in one batch: same channels and shape."""
    jpeg = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]
    la = Image.merge("LA", [Image.fromarray(_picture()).convert("L")] * 2)
    la.save(tmp_path / "la.png")
    Image.fromarray(_picture()).convert("RGBA").save(tmp_path / "rgba.png")
    volume = np.random.default_rng(0).random((40, 30, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    dicom_file(tmp_path / "x.dcm", (np.arange(50 * 60).reshape(50, 60) % 4000).astype(np.uint16))
    items = [{"image": str(jpeg), "label": 0}, {"image": str(tmp_path / "la.png"), "label": 1},
             {"image": str(tmp_path / "rgba.png"), "label": 0}, {"image": str(tmp_path / "x.dcm"), "label": 1},
             {"image": str(tmp_path / "v.nii.gz"), "label": 1, "slice_axis": 2, "slice_index": 2}]
    for channels in (1, 3):
        ds = SkipFailedCacheDataset(items, diffusion_transforms(32, channels=channels), num_workers=2, progress=False)
        batch = next(iter(DataLoader(ds, batch_size=5)))
        assert batch["image"].shape == (5, channels, 32, 32) and batch["label"].tolist() == [0, 1, 0, 1, 1]


def test_resize_keeps_aspect_crop_by_default_or_pad(tmp_path):
    wide = np.zeros((50, 100), np.uint8)
    wide[:, :25] = 255  # a bright band at the left quarter
    wide[20:30, 45:55] = 128  # a centred square
    Image.fromarray(wide).save(tmp_path / "wide.png")
    item = {"image": str(tmp_path / "wide.png"), "label": 0}
    crop = diffusion_transforms(20)(item)["image"][0]
    pad = diffusion_transforms(20, resize_mode="pad")(item)["image"][0]
    stretch = diffusion_transforms(20, resize_mode="stretch")(item)["image"][0]
    assert float(crop[:, :3].max()) == -1.0  # the left band is cropped away
    assert abs(float(crop[10, 10]) - (128 / 255 * 2 - 1)) < 0.05  # the centre square stays square and central
    assert float(pad[:4].max()) == -1.0 and float(pad[-4:].max()) == -1.0  # black bars above and below
    assert float(pad[8:12, 1:4].min()) > 0.9  # the band is kept
    assert float(stretch[2:-2, 1:4].min()) > 0.9 and float(stretch[2].max()) > 0.9  # stretched: no bars
    with pytest.raises(ValueError, match="resize_mode"):
        diffusion_transforms(20, resize_mode="squash")


def test_split_parent_folder_and_one_class_warning(tmp_path, kermany):
    src = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[:4]
    wrapper = tmp_path / "download" / "chest_xray"
    for split in ("train", "val", "test"):
        for c in ("NORMAL", "PNEUMONIA"):
            (wrapper / split / c).mkdir(parents=True)
            for s in src:
                (wrapper / split / c / s.name).symlink_to(s)
    (tmp_path / "download" / "__MACOSX").mkdir()
    (wrapper / "__MACOSX").mkdir()
    datalist, summary = build_datalist(tmp_path / "download")  # the folder above: one wrapper, then splits
    assert datalist["classes"] == ["NORMAL", "PNEUMONIA"] and not summary.warnings
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [8, 8, 8]
    one, summary = build_datalist(wrapper / "train" / "NORMAL" / "..", classes=["NORMAL"])
    assert one["classes"] == ["NORMAL"] and any("only one class" in w for w in summary.warnings)
    assert "warning: " in summary_table(one, summary)


@pytest.mark.slow
def test_cache_failures_never_abort(tmp_path):
    """MONAI's CacheDataset, an item failing while its thread pool decodes big images, often ended in SIGABRT
    ('terminate called without an active exception'); the skipping dataset drops the item and finishes."""
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (800, 800), dtype=np.uint8)).save(
            tmp_path / f"{i:02d}.jpeg", quality=90)
    data = (tmp_path / "00.jpeg").read_bytes()
    (tmp_path / "00.jpeg").write_bytes(data[: len(data) // 3])
    script = textwrap.dedent(f"""
        import glob
        from medgen.data.dataset import SkipFailedCacheDataset
        from medgen.data.transforms import diffusion_transforms
        items = [{{"image": p, "label": 0}} for p in sorted(glob.glob({str(tmp_path)!r} + "/*.jpeg"))]
        ds = SkipFailedCacheDataset(items, diffusion_transforms(32), num_workers=2, progress=True)
        print("kept", len(ds), dict(ds.skipped))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "kept 11 {'truncated image': 1}" in run.stdout
    assert "00.jpeg" in run.stderr and "terminate called" not in run.stderr


def test_dataset_drops_failures_with_counts_and_refuses_when_nothing_loads(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.fromarray(_picture()).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    items = [{"image": str(good), "label": 0}, {"image": str(tmp_path / "cut.png"), "label": 1},
             {"image": str(tmp_path / "empty.png"), "label": 1}, {"image": str(tmp_path / "gone.png"), "label": 0}]
    ds = SkipFailedCacheDataset(items, diffusion_transforms(16), num_workers=2, progress=False)
    assert len(ds) == 1 and sum(ds.skipped.values()) == 3 and ds.skipped["missing file"] == 1
    assert all(Path(p).name in message for p, message in ds.failures)
    assert "dropped 3 of 4 items" in caplog.text
    lazy = SkipFailedCacheDataset(items, diffusion_transforms(16), cache_rate=0.0, progress=False)
    assert torch.equal(lazy[1]["image"], ds[0]["image"])  # an uncached failure is replaced by one that loads
    with pytest.raises(RuntimeError, match="none of the 3 items could be loaded"):
        SkipFailedCacheDataset(items[1:], diffusion_transforms(16), progress=False)
