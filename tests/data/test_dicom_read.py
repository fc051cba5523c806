"""read_dicom_image on real DICOM files: pydicom's bundled test files and pydicom-data's chest CR."""

from __future__ import annotations

import collections
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.pixels.decoders.base import get_decoder

from medgen.data.dicom import (
    WINDOW_PRESETS,
    DicomReadError,
    LoadDicomd,
    is_dicom,
    read_dicom_image,
    window_to_unit,
)

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def tf(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return str(path)


def modality_values(name: str, frame: int | None = None) -> tuple[np.ndarray, pydicom.Dataset]:
    ds = pydicom.dcmread(tf(name))
    arr = ds.pixel_array if frame is None else ds.pixel_array[frame]
    return apply_modality_lut(arr, ds).astype(np.float64), ds


def test_presets_contract():
    expected = {"lung": (-600, 1500), "mediastinum": (50, 350), "brain": (40, 80), "bone": (400, 1800)}
    expected.update({"abdomen": (40, 400), "soft_tissue": (50, 400)})
    for name, window in expected.items():
        assert WINDOW_PRESETS[name] == window


def test_ct_without_window_uses_rescaled_min_max():
    img, meta = read_dicom_image(tf("CT_small.dcm"))
    hu, ds = modality_values("CT_small.dcm")
    assert img.dtype == np.float32 and img.shape == (128, 128)
    np.testing.assert_allclose(img, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert meta["window_source"] == "minmax" and meta["modality"] == "CT"
    assert meta["window"] == pytest.approx(((hu.min() + hu.max()) / 2, hu.max() - hu.min()))
    assert meta["pixel_spacing"] == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert "PatientName" not in meta and "patient" not in str(meta).lower()


def test_lung_preset_on_ct_is_hounsfield_window():
    img, meta = read_dicom_image(tf("CT_small.dcm"), preset="lung")
    hu, _ = modality_values("CT_small.dcm")
    assert meta["window"] == (-600.0, 1500.0) and meta["window_source"] == "preset:lung"
    np.testing.assert_allclose(img, window_to_unit(hu, -600, 1500), atol=1e-6)
    assert (img[hu <= -1350] == 0).all() and (img[hu >= 150] == 1).all()


def test_precedence_explicit_over_preset_over_header_over_minmax():
    path = tf("MR_small.dcm")
    assert read_dicom_image(path, window=(100, 200), preset="bone")[1]["window"] == (100.0, 200.0)
    assert read_dicom_image(path, preset="bone")[1]["window"] == WINDOW_PRESETS["bone"]
    _, meta = read_dicom_image(path)
    assert meta["window_source"] == "header" and meta["window"] == (600.0, 1600.0)
    assert read_dicom_image(path, voi=False)[1]["window_source"] == "minmax"
    with pytest.raises(KeyError, match="unknown window preset"):
        read_dicom_image(path, preset="nope")


def test_header_window_values_follow_dicom_linear_formula():
    img, _ = read_dicom_image(tf("MR_small.dcm"))
    values, _ = modality_values("MR_small.dcm")
    c, w = 600.0, 1600.0
    expected = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_first_of_several_windows_is_used():
    ds = pydicom.dcmread(tf("MR-SIEMENS-DICOM-WithOverlays.dcm"), stop_before_pixels=True)
    assert len(ds.WindowCenter) > 1
    _, meta = read_dicom_image(tf("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    assert meta["window"] == (float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))


def test_voi_lut_sequence_applied():
    img, meta = read_dicom_image(tf("vlut_04.dcm"))
    values, ds = modality_values("vlut_04.dcm")
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = apply_voi(values.astype(np.int64), ds, index=0) / (2**bits - 1)
    assert meta["window_source"] == "voi_lut"
    np.testing.assert_allclose(img, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_monochrome1_chest_cr_is_inverted(name):
    img, meta = read_dicom_image(tf(name))
    values, ds = modality_values(name)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and meta["photometric"] == "MONOCHROME1"
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(img, 1.0 - window_to_unit(values, c, w), atol=1e-6)
    # high stored value = dark in MONOCHROME1: the brightest output pixel is where the stored value is lowest
    assert img.flat[np.argmin(values)] == img.max() and img.flat[np.argmax(values)] == img.min()


def test_rg1_chest_cr_looks_like_a_chest():
    img, meta = read_dicom_image(tf("RG1_UNCR.dcm"))
    assert meta["modality"] == "CR" and img.shape == (1955, 1841)
    assert 0.0 <= img.min() < img.max() <= 1.0 and 0.3 < img.mean() < 0.9


@pytest.mark.parametrize(
    ("compressed", "plain"),
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
    ],
)
def test_lossless_compressed_equals_uncompressed(compressed, plain):
    ts = pydicom.dcmread(tf(compressed), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(ts).is_available:
        pytest.skip(f"no decoder for {ts.name}")
    a, meta = read_dicom_image(tf(compressed))
    b, _ = read_dicom_image(tf(plain))
    assert meta["transfer_syntax"] == ts.name
    np.testing.assert_array_equal(a, b)


def test_jpeg2000_nm_image_decodes():
    img, meta = read_dicom_image(tf("JPEG2000.dcm"))
    assert img.shape == (1024, 256) and meta["transfer_syntax"].startswith("JPEG 2000")


def test_syntax_without_installed_decoder_names_syntax_and_package():
    path = tf("JPEG-LL.dcm")  # JPEG Lossless, Process 14 SV1: needs pylibjpeg-libjpeg or gdcm
    if get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        img, _ = read_dicom_image(path)
        assert img.ndim == 2
        return
    with pytest.raises(DicomReadError) as err:
        read_dicom_image(path)
    assert "JPEG Lossless" in str(err.value) and "pip install pylibjpeg pylibjpeg-libjpeg" in str(err.value)
    assert path in str(err.value) and err.value.reason == "unsupported_syntax"


def test_syntax_with_no_decoder_at_all(tmp_path):
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    out = tmp_path / "mpeg2.dcm"
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(DicomReadError, match="unsupported transfer syntax 'MPEG2"):
        read_dicom_image(out)


def test_bad_files_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    truncated = tmp_path / "truncated"
    data = Path(tf("CT_small.dcm")).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n")
    empty = tmp_path / "empty"
    empty.touch()
    cases = {
        corrupt: ("corrupt", "truncated", "no_pixel_data"),
        truncated: ("truncated", "corrupt"),
        Path(tf("MR_truncated.dcm")): ("truncated",),
        text: ("not_dicom",),
        empty: ("not_dicom",),
        tmp_path / "missing.dcm": ("missing",),
        Path(tf("rtplan.dcm")): ("no_pixel_data",),
        Path(tf("SC_rgb.dcm")): ("colour",),
        Path(tf("US1_UNCR.dcm")): ("colour",),
        Path(tf("emri_small.dcm")): ("multi_frame",),
    }
    for path, reasons in cases.items():
        with pytest.raises(DicomReadError) as err:
            read_dicom_image(path)
        assert err.value.reason in reasons, (path, err.value)
        assert str(path) in str(err.value)
        assert isinstance(err.value, ValueError)


def test_multi_frame_needs_frame_and_picks_it():
    with pytest.raises(DicomReadError, match=r"multi-frame image \(10 frames\).*frame="):
        read_dicom_image(tf("emri_small.dcm"))
    img, meta = read_dicom_image(tf("emri_small.dcm"), frame=3)
    values, _ = modality_values("emri_small.dcm", frame=3)
    assert meta["frame"] == 3
    np.testing.assert_allclose(img, (values - values.min()) / (values.max() - values.min()), atol=1e-6)
    with pytest.raises(DicomReadError, match="out of range"):
        read_dicom_image(tf("emri_small.dcm"), frame=10)


def test_is_dicom(tmp_path):
    assert is_dicom(tf("CT_small.dcm")) and is_dicom(tf("RG1_UNCR.dcm"))
    assert is_dicom(tf("ExplVR_LitEndNoMeta.dcm"))  # no preamble, no file meta: pydicom still parses it
    no_ext = tmp_path / "IM0001"
    shutil.copy(tf("MR_small.dcm"), no_ext)
    assert is_dicom(no_ext)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert not is_dicom(png) and not is_dicom(tmp_path / "absent") and not is_dicom(tmp_path)


def test_load_dicomd_transform():
    out = LoadDicomd(keys="image", preset="brain")({"image": tf("MR_small.dcm"), "label": 1})
    assert out["image"].shape == (1, 64, 64) and out["label"] == 1
    assert out["image_meta_dict"]["window"] == WINDOW_PRESETS["brain"]


def _all_test_files() -> list[Path]:
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    extra = Path(tf("RG1_UNCR.dcm")).parent
    return sorted(set(bundled.glob("*.dcm")) | set(extra.glob("*.dcm")))


def test_every_real_test_file_reads_or_is_refused_clearly(capsys):
    read, refused = 0, collections.Counter()
    for path in _all_test_files():
        try:
            img, _ = read_dicom_image(path)
        except DicomReadError as exc:
            assert str(path) in str(exc)
            refused[exc.reason] += 1
            continue
        assert img.dtype == np.float32 and img.ndim == 2 and 0.0 <= img.min() <= img.max() <= 1.0
        read += 1
    with capsys.disabled():
        print(f"\nreal DICOM test files: {read} read, {sum(refused.values())} refused {dict(refused)}")
    assert read >= 30
