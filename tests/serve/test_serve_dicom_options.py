"""DICOM output options over the API: the IOD (sc/cr/mr) and bit depth (12/16) that ``medgen export`` accepts, carried
into every file of the result zip, and 422 for anything else."""

from __future__ import annotations

import io
import zipfile

import httpx
import pytest
from serve_harness import Server, wait_for

pytestmark = pytest.mark.slow

JOB = {"bundle": "cxr", "class_label": "NORMAL", "num_images": 2, "seed": 3, "steps": 2, "output_format": "dicom"}
#: iod -> (SOP Class UID, Modality), as DICOM PS3.4 lists them
SOP = {"sc": ("1.2.840.10008.5.1.4.1.1.7", "OT"), "cr": ("1.2.840.10008.5.1.4.1.1.1", "CR"),
       "mr": ("1.2.840.10008.5.1.4.1.1.4", "MR")}


def dicom_files(client: httpx.Client, **options) -> list:
    import pydicom

    response = client.post("/api/v1/generate", json={**JOB, **options})
    assert response.status_code == 202, response.text
    info = wait_for(client, response.json()["job_id"], ("succeeded", "failed"))
    assert info["status"] == "succeeded", info.get("error")
    assert {k: info["request"][k] for k in options} == options
    archive = zipfile.ZipFile(io.BytesIO(client.get(info["result_url"]).content))
    names = sorted(n for n in archive.namelist() if n.endswith(".dcm"))
    assert len(names) == JOB["num_images"]
    return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in names]


@pytest.mark.parametrize(("options", "iod", "bits"), [
    ({}, "sc", 16),
    ({"iod": "cr", "bits": 12}, "cr", 12),
    ({"iod": "mr", "bits": 16, "field_of_view_mm": 240}, "mr", 16),
    ({"bits": 12}, "sc", 12),
])
def test_result_files_carry_the_requested_iod_and_bit_depth(server: Server, keys: dict[str, str], options: dict,
                                                            iod: str, bits: int) -> None:
    pytest.importorskip("pydicom")
    with server.client(keys["bob"]) as client:
        files = dicom_files(client, **options)
    for ds in files:
        assert (ds.SOPClassUID, ds.Modality) == SOP[iod]
        assert ds.file_meta.MediaStorageSOPClassUID == SOP[iod][0]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits, bits - 1)
        assert int(ds.pixel_array.max()) < 2**bits
        assert ds.SyntheticData == "YES"
        if "field_of_view_mm" in options:  # 240 mm over the micro model's 16 pixels
            assert [float(v) for v in ds.PixelSpacing] == [15.0, 15.0]


@pytest.mark.parametrize(("changes", "field"), [
    ({"iod": "ct"}, "iod"),
    ({"iod": "CR"}, "iod"),
    ({"iod": ""}, "iod"),
    ({"bits": 8}, "bits"),
    ({"bits": 32}, "bits"),
    ({"bits": "12"}, "bits"),
    ({"bits": 12.0}, "bits"),
    ({"bits": True}, "bits"),
    ({"iod": "cr", "output_format": "png"}, "iod"),
    ({"bits": 12, "output_format": "nifti"}, "bits"),
    ({"field_of_view_mm": 240, "output_format": "png"}, "field_of_view_mm"),
    ({"field_of_view_mm": 0}, "field_of_view_mm"),
    ({"field_of_view_mm": "240"}, "field_of_view_mm"),
    # the micro weights record no spacing and their served name is no known bundle: MR needs one given
    ({"iod": "mr"}, "field_of_view_mm"),
])
def test_other_iods_and_bit_depths_are_refused(server: Server, keys: dict[str, str], changes: dict,
                                               field: str) -> None:
    with server.client(keys["bob"]) as client:
        response = client.post("/api/v1/generate", json={**JOB, **changes})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["loc"][:2] == ["body", field] for d in detail), detail
