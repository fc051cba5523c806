"""The training pipeline on every input kind: PNG/JPEG, DICOM (windowing, MONOCHROME1), NIfTI slices, npz."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medgen.data.datalist import build_datalist
from medgen.data.dicom import read_dicom_image
from medgen.data.loaders import ImageLoadError, LoadMedicalImage, nifti_slice_indices
from medgen.data.transforms import diffusion_transforms


def test_jpeg_grey_content_is_one_channel_scaled_to_minus_one_one(kermany):
    path = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]
    out = diffusion_transforms(64)({"image": str(path), "label": 0})
    assert out["image"].shape == (1, 64, 64) and out["image"].dtype == torch.float32
    assert -1.0 <= float(out["image"].min()) < -0.5 and 0.5 < float(out["image"].max()) <= 1.0
    assert out["label"].dtype == torch.long
    # the grey level follows the file: pixel (0,0) of the full-size load equals the JPEG's own value
    full = LoadMedicalImage()(str(path))
    assert abs(float(full[0, 0, 0]) * 255 - np.asarray(Image.open(path).convert("L"))[0, 0]) < 1e-3


def test_rgb_kept_when_asked(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    Image.fromarray(rgb).save(tmp_path / "cells.png")
    grey = LoadMedicalImage(channels=1)(str(tmp_path / "cells.png"))
    colour = LoadMedicalImage(channels=3)(str(tmp_path / "cells.png"))
    assert grey.shape == (1, 40, 30) and abs(float(grey.mean()) - 0.299) < 1e-3
    assert colour.shape == (3, 40, 30) and float(colour[0].mean()) == 1.0 and float(colour[1].max()) == 0.0
    out = diffusion_transforms(16, channels=3)({"image": str(tmp_path / "cells.png")})
    assert out["image"].shape == (3, 16, 16)


def test_dicom_ct_uses_header_window_or_preset():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = -600.0, 1500.0  # the lung preset
    out = diffusion_transforms(64, preset="lung")({"image": path})["image"]
    lung, _ = read_dicom_image(path, preset="lung")
    expected = np.clip((hu - (center - 0.5) - 0.5) / (width - 1) + 0.5, 0, 1)  # DICOM linear VOI function
    assert np.allclose(lung, expected, atol=1e-3)
    assert out.shape == (1, 64, 64)
    bone = diffusion_transforms(64, window=(400, 1800))({"image": path})["image"]
    assert not torch.allclose(out, bone)


def test_dicom_monochrome1_is_inverted():
    path = get_testdata_file("RG1_UNCR.dcm")  # real chest CR, MONOCHROME1 (pydicom-data)
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = LoadMedicalImage()(path)[0].numpy()
    raw = ds.pixel_array.astype(np.float32)
    # high stored value = dark after inversion: the brightest stored pixel region becomes the darkest
    assert np.corrcoef(image.ravel()[::97], raw.ravel()[::97])[0, 1] < -0.9
    out = diffusion_transforms(64)({"image": path})["image"]
    assert out.shape == (1, 64, 64) and float(out.min()) >= -1 and float(out.max()) <= 1


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"DICM" * 10)
    with pytest.raises(ValueError, match="scan.dcm"):
        LoadMedicalImage()(str(bad))
    fake = tmp_path / "x.png"
    fake.write_text("hello")
    with pytest.raises(ImageLoadError, match="x.png"):
        LoadMedicalImage()(str(fake))
    with pytest.raises(ImageLoadError, match="does not exist"):
        LoadMedicalImage()(str(tmp_path / "gone.png"))


@pytest.fixture()
def nifti_tree(tmp_path):
    """Two tiny volumes: a bright block in slices 3..6 of 10 along axis 2."""
    root = tmp_path / "mri"
    for label in ("healthy", "lesion"):
        (root / label).mkdir(parents=True)
        volume = np.zeros((20, 24, 10), np.float32)
        volume[4:16, 4:20, 3:7] = 100.0 if label == "healthy" else 200.0
        nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.0, 1.0])), root / label / "vol.nii.gz")
    return root


def test_nifti_slices_by_foreground_and_by_range(nifti_tree):
    path = nifti_tree / "healthy" / "vol.nii.gz"
    assert nifti_slice_indices(path, axis=2, min_foreground=0.1) == [3, 4, 5, 6]
    assert nifti_slice_indices(path, axis=2, index_range=(1, 4)) == [3]  # 1, 2 are constant (all 0): left out
    assert nifti_slice_indices(path, axis=2, index_range=(3, 6)) == [3, 4, 5]
    datalist, _ = build_datalist(nifti_tree, val_fraction=0, test_fraction=0, nifti={"axis": 2})
    assert len(datalist["training"]) == 8
    item = datalist["training"][0]
    assert item["slice_axis"] == 2 and item["slice_index"] in (3, 4, 5, 6)
    out = diffusion_transforms(32)(item)["image"]
    assert out.shape == (1, 32, 32) and float(out.max()) == pytest.approx(1.0) and float(out.min()) == -1.0


def test_npz_item_loads_the_indexed_image(pneumoniamnist):
    data = np.load(pneumoniamnist)
    item = {"image": str(pneumoniamnist), "npz_key": "val_images", "npz_index": 5, "label": 0}
    out = LoadMedicalImage()(item["image"], **item)
    assert torch.allclose(out[0], torch.from_numpy(data["val_images"][5] / 255.0).float())
