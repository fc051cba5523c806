"""PACS round trips against a real Orthanc (DIMSE and DICOMweb), refusal/down handling, retries, reports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medgen.export.cli_commands import export_command, send_command
from medgen.export.dicom_writer import IODS, export_images
from medgen.export.pacs import DicomwebClient, DimseClient, load_credentials, parse_target, send


def pixel_bytes(path: Path) -> bytes:
    return pydicom.dcmread(path).PixelData


@pytest.fixture
def series(samples_dir, tmp_path):
    """A freshly exported CR series (4 instances) -> (summary, {sop_uid: path})."""
    summary = export_images(samples_dir, tmp_path / "dicom", fmt="dicom", iod="cr")
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in summary["files"]}
    return summary, by_uid


# --- fast: parsing and credentials ----------------------------------------------------------------------------------


def test_parse_targets():
    t = parse_target("dimse://ORTHANC@127.0.0.1:4242")
    assert (t.scheme, t.ae_title, t.host, t.port) == ("dimse", "ORTHANC", "127.0.0.1", 4242)
    assert parse_target("dicomweb://pacs:8042/dicom-web/").url == "http://pacs:8042/dicom-web"
    assert parse_target("dicomwebs://pacs/dicom-web").url == "https://pacs:443/dicom-web"
    for bad in ("dimse://127.0.0.1:4242", "ftp://x", "dimse://AE@host"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_credentials_from_env_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDGEN_PACS_USER", raising=False)
    assert load_credentials() is None
    monkeypatch.setenv("MEDGEN_PACS_USER", "envuser")
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", "envpw")
    assert load_credentials() == ("envuser", "envpw")
    js, kv, colon = tmp_path / "c.json", tmp_path / "c.env", tmp_path / "c.txt"
    js.write_text(json.dumps({"user": "u1", "password": "p1"}))
    kv.write_text("# pacs\nMEDGEN_PACS_USER=u2\nMEDGEN_PACS_PASSWORD='p2'\n")
    colon.write_text("u3:p:3\n")
    assert [load_credentials(credentials_file=f) for f in (js, kv, colon)] == [
        ("u1", "p1"),
        ("u2", "p2"),
        ("u3", "p:3"),
    ]
    assert load_credentials("a", "b", credentials_file=js) == ("a", "b")


def test_send_command_bad_target_exit_code(tmp_path):
    assert send_command(tmp_path, "ftp://nowhere") == 2


# --- a real SCP of our own that is out of resources once per instance: retries -----------------------------------


def test_dimse_retries_transient_out_of_resources(series, unused_port):
    from pynetdicom import AE, evt

    summary, by_uid = series
    seen: dict[str, int] = {}

    def on_store(event):
        uid = event.request.AffectedSOPInstanceUID
        seen[uid] = seen.get(uid, 0) + 1
        return 0xA700 if seen[uid] == 1 else 0x0000

    ae = AE(ae_title="FLAKY")
    ae.add_supported_context(IODS["cr"][0], [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = unused_port
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        results = send(summary["files"], f"dimse://FLAKY@127.0.0.1:{port}", retries=2, backoff=0.01)
    finally:
        server.shutdown()
    assert [r.status for r in results] == ["sent"] * 4
    assert all(r.attempts == 2 for r in results) and set(seen.values()) == {2}


# --- real Orthanc ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dimse_echo_store_find_get_round_trip(orthanc, series, tmp_path):
    summary, by_uid = series
    study = summary["study"]
    client = DimseClient(orthanc.aet, "127.0.0.1", orthanc.dicom_port, calling_aet=orthanc.scu_aet)
    client.echo()
    results = send([summary["files"][0].parent.parent], f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    assert sorted(r.sop_instance_uid for r in results if r.status == "sent") == sorted(by_uid)
    found = client.find({"StudyInstanceUID": study.study_instance_uid, "SeriesInstanceUID": "",
                         "NumberOfSeriesRelatedInstances": "", "Modality": ""}, level="SERIES")  # fmt: skip
    assert len(found) == 1 and found[0].SeriesInstanceUID == study.series_instance_uid
    assert int(found[0].NumberOfSeriesRelatedInstances) == 4 and found[0].Modality == "CR"
    got = client.get({"StudyInstanceUID": study.study_instance_uid, "SeriesInstanceUID": study.series_instance_uid})
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(by_uid)
    for ds in got:
        assert ds.PixelData == pixel_bytes(by_uid[ds.SOPInstanceUID])  # byte-identical pixel data
        assert ds[0x0008, 0x001C].value == "YES"
    # and via Orthanc's REST API (authenticated)
    uid = next(iter(by_uid))
    orthanc_id = orthanc.rest("/tools/lookup", method="POST", data=uid).json()[0]["ID"]
    raw = orthanc.rest(f"/instances/{orthanc_id}/file").content
    assert pydicom.dcmread(io.BytesIO(raw)).PixelData == pixel_bytes(by_uid[uid])


@pytest.mark.slow
def test_dicomweb_stow_qido_wado_round_trip(orthanc, series, monkeypatch):
    summary, by_uid = series
    study = summary["study"]
    monkeypatch.setenv("MEDGEN_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", orthanc.password)
    results = send(summary["files"], f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web")
    assert [r.status for r in results] == ["sent"] * 4, [r.detail for r in results]
    web = DicomwebClient(f"{orthanc.url}/dicom-web", orthanc.auth)
    hits = web.search(study.study_instance_uid)
    assert sorted(h["00080018"]["Value"][0] for h in hits) == sorted(by_uid)
    for uid, path in by_uid.items():
        ds = web.retrieve(study.study_instance_uid, study.series_instance_uid, uid)
        assert ds.PixelData == pixel_bytes(path)


@pytest.mark.slow
def test_dicomweb_wrong_password_claims_nothing(orthanc, series):
    summary, _ = series
    target = f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web"
    results = send(summary["files"], target, user=orthanc.user, password="wrong", retries=0)
    assert {r.status for r in results} == {"failed"} and "HTTP 401" in results[0].detail
    assert requests.get(f"{orthanc.url}/instances", timeout=5).status_code == 401  # auth really is on


@pytest.mark.slow
def test_refused_association_and_pacs_down_claim_nothing(orthanc, series, tmp_path, unused_port):
    summary, by_uid = series
    refused = send(summary["files"], f"dimse://NOT_ORTHANC@127.0.0.1:{orthanc.dicom_port}", retries=3, backoff=0.01)
    assert {r.status for r in refused} == {"failed"}
    assert "association rejected" in refused[0].detail and "Called AE title not recognised" in refused[0].detail
    assert refused[0].attempts == 1  # a permanent rejection is not retried
    down_port = unused_port
    report = tmp_path / "report.csv"
    code = send_command(summary["files"][0].parent.parent, f"dimse://ORTHANC@127.0.0.1:{down_port}", retries=1,
                        report=report)  # fmt: skip
    assert code == 1
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"failed"}
    assert "cannot connect" in rows[0]["detail"] and rows[0]["attempts"] == "2"
    for uid in by_uid:  # nothing reached Orthanc
        assert orthanc.rest("/tools/lookup", method="POST", data=uid).json() == []


@pytest.mark.slow
def test_export_then_send_with_credentials_file_and_json_report(orthanc, samples_dir, tmp_path):
    creds = tmp_path / "pacs.json"
    creds.write_text(json.dumps({"user": orthanc.user, "password": orthanc.password}))
    report = tmp_path / "sent.json"
    code = export_command(samples_dir, tmp_path / "out", iod="sc", send_to=f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web",
                          credentials_file=creds, report=report)  # fmt: skip
    assert code == 0
    rows = json.loads(report.read_text())
    assert len(rows) == 4 and {r["status"] for r in rows} == {"sent"}
    assert send_command(tmp_path / "out", f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}") == 0  # re-send ok


@pytest.mark.slow
def test_sending_the_same_images_twice_updates_instead_of_duplicating(orthanc, samples_dir, tmp_path, monkeypatch):
    dimse = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    first = export_images(samples_dir, tmp_path / "first", iod="cr")
    assert [r.status for r in send(first["files"], dimse)] == ["sent"] * 4
    count = orthanc.rest("/statistics").json()["CountInstances"]
    series = orthanc.rest("/tools/lookup", method="POST", data=first["study"].series_instance_uid).json()[0]["ID"]
    assert len(orthanc.rest(f"/series/{series}").json()["Instances"]) == 4
    again = export_images(samples_dir, tmp_path / "again", iod="cr")  # a second export of the same samples
    assert [r.status for r in send(again["files"], dimse)] == ["sent"] * 4
    monkeypatch.setenv("MEDGEN_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", orthanc.password)
    web = send(again["files"], f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web")
    assert [r.status for r in web] == ["sent"] * 4, [r.detail for r in web]
    assert orthanc.rest("/statistics").json()["CountInstances"] == count
    assert len(orthanc.rest(f"/series/{series}").json()["Instances"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("calling, reason", [
    ("INTRUDER", "association rejected (Rejected Permanent, Service User: Calling AE title not recognised)"),
    ("NOSTORE", "association aborted by the PACS at the first C-STORE: it accepted calling AE 'NOSTORE' but "
                "refuses to store from it"),
])  # fmt: skip
def test_a_calling_aet_the_pacs_refuses_is_named_on_every_row(orthanc, series, tmp_path, capsys, calling, reason):
    """Orthanc checks calling AEs (DicomAlwaysAllowStore false): an unknown one is rejected at association, one
    declared without store rights is aborted at the first C-STORE; every file's row and line says so."""
    summary, by_uid = series
    report = tmp_path / "report.csv"
    code = send_command(summary["files"][0].parent.parent, f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                        retries=2, report=report, calling_aet=calling)  # fmt: skip
    assert code == 1
    rows = list(csv.DictReader(open(report)))
    assert len(rows) == 4 and all(r["status"] == "failed" and reason in r["detail"] for r in rows), rows
    failed_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED: ")]
    assert len(failed_lines) == 4 and all(reason in line for line in failed_lines)
    for uid in by_uid:  # nothing reached Orthanc
        assert orthanc.rest("/tools/lookup", method="POST", data=uid).json() == []


@pytest.mark.slow
def test_orthanc_names_the_synthetic_data_tag(orthanc, series):
    """With the Dictionary entry of docs/dicom.md, Orthanc 1.10 shows (0008,001C) as SyntheticData = YES."""
    summary, by_uid = series
    assert send(summary["files"][:1], f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")[0].status == "sent"
    uid = pydicom.dcmread(summary["files"][0], stop_before_pixels=True).SOPInstanceUID
    orthanc_id = orthanc.rest("/tools/lookup", method="POST", data=uid).json()[0]["ID"]
    tags = orthanc.rest(f"/instances/{orthanc_id}/tags").json()
    assert tags["0008,001c"] == {"Name": "SyntheticData", "Type": "String", "Value": "YES"}
    assert orthanc.rest(f"/instances/{orthanc_id}/simplified-tags").json()["SyntheticData"] == "YES"
