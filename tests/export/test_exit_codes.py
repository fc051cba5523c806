"""`medgen export` and `medgen send` exit with the codes docs/dicom.md states ("Exit codes"), run as a user runs
them (a subprocess), with the one-line message each case prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "dicom.md").read_text()


def medgen(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MEDGEN_PACS_USER", None)
    return subprocess.run([sys.executable, "-m", "medgen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)  # fmt: skip


def test_the_doc_states_the_codes_tested_here():
    section = DOC.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for line in ("| 0 |", "| 1 |", "| 2 |"):
        assert line in section


def test_export_exit_codes(samples_dir, tmp_path, unused_port):
    ok = medgen("export", samples_dir, "--out", tmp_path / "ok", "--iod", "cr")
    assert ok.returncode == 0 and "exported 4 dicom file(s)" in ok.stdout, ok.stderr
    cases = {  # (arguments, code, what stderr says)
        "no samples folder": (["export", tmp_path / "none", "--out", tmp_path / "o1"], 2, "no such samples folder"),
        "bad iod": (["export", samples_dir, "--out", tmp_path / "o2", "--iod", "ct"], 2, "invalid choice: 'ct'"),
        "bad spacing": (["export", samples_dir, "--out", tmp_path / "o3", "--pixel-spacing", "0"], 2,
                        "pixel spacing must be one or two positive numbers"),
        "bad uid root": (["export", samples_dir, "--out", tmp_path / "o4", "--uid-root", "1.2.x"], 2,
                         "UID root '1.2.x' is not usable"),
        "MR without spacing": (["export", samples_dir, "--out", tmp_path / "o5", "--iod", "mr"], 2,
                               "MR requires one; give --field-of-view-mm"),
        "bad target": (["export", samples_dir, "--out", tmp_path / "o6", "--send-to", "ftp://pacs"], 2,
                       "unknown target scheme"),
        "send a PNG": (["export", samples_dir, "--out", tmp_path / "o7", "--format", "png", "--send-to",
                        f"dimse://ORTHANC@127.0.0.1:{unused_port}"], 2, "--send-to needs --format dicom"),
        "PACS down": (["export", samples_dir, "--out", tmp_path / "o8", "--send-to",
                       f"dimse://ORTHANC@127.0.0.1:{unused_port}", "--retries", "0"], 1, "cannot connect"),
    }  # fmt: skip
    for name, (args, code, message) in cases.items():
        run = medgen(*args)
        assert (run.returncode, message in run.stderr) == (code, True), (name, run.stderr[-2000:])
        if code == 2 and name != "bad iod":
            assert not any((tmp_path / args[3]).glob("**/*.dcm")), name  # stopped before writing
    # the same export and send again once the PACS is up (here: still down) is a retry, not another export's
    # leftovers: its own send report (the default one, or --report inside the folder) does not stop it
    retry = medgen(*cases["PACS down"][0])
    assert (retry.returncode, "cannot connect" in retry.stderr) == (1, True), retry.stderr[-2000:]
    assert (tmp_path / "o8" / "send_report.csv").is_file()
    report = tmp_path / "o8" / "report.json"
    for _ in range(2):
        again = medgen(*cases["PACS down"][0], "--report", report)
        assert (again.returncode, report.is_file()) == (1, True), again.stderr[-2000:]
    busy = tmp_path / "o10"  # an output folder another export is writing: it belongs to that one
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from medgen.folder_lock import hold_folder; "
                               "hold_folder(sys.argv[1], 'export', 'x'); print('held', flush=True); sys.stdin.read()",
                               str(busy)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        run = medgen("export", samples_dir, "--out", busy)
        assert run.returncode == 2 and run.stderr.strip() == (
            f"error: cannot export: {busy} is in use by another process (export lock .medgen-export.lock is held): "
            "wait for it to finish, or write to another folder (--out DIR)"), run.stderr[-2000:]
        assert not any(busy.glob("**/*.dcm"))
    finally:
        holder.kill()
        holder.wait(timeout=60)
    (samples_dir / "NORMAL" / "broken.png").write_bytes(b"not a PNG")  # a damaged image fails; the rest go on
    with open(samples_dir / "samples.jsonl", "a") as f:
        f.write('{"file": "NORMAL/broken.png", "class": "NORMAL", "seed": 99}\n')
    bad_line = medgen("export", samples_dir, "--out", tmp_path / "o9")
    assert bad_line.returncode == 1 and "broken.png" in bad_line.stderr and "exported 4" in bad_line.stdout


def test_send_exit_codes(samples_dir, tmp_path, unused_port):
    assert medgen("export", samples_dir, "--out", tmp_path / "dicom").returncode == 0
    creds = tmp_path / "empty.json"
    creds.write_text(json.dumps({"password": "x"}))
    cases = {
        "no such path": (["send", tmp_path / "nothing", "--to", f"dimse://A@127.0.0.1:{unused_port}"], 2,
                         "no such file or folder"),
        "bad target": (["send", tmp_path / "dicom", "--to", "dimse://127.0.0.1:4242"], 2, "bad DIMSE target"),
        "bad credentials file": (["send", tmp_path / "dicom", "--to", f"dicomweb://127.0.0.1:{unused_port}/dw",
                                  "--credentials", creds], 2, "no user/password found"),
        "PACS down": (["send", tmp_path / "dicom", "--to", f"dimse://A@127.0.0.1:{unused_port}", "--retries", "0"],
                      1, "cannot connect"),
    }  # fmt: skip
    for name, (args, code, message) in cases.items():
        run = medgen(*args)
        assert (run.returncode, message in run.stderr) == (code, True), (name, run.stderr[-2000:])


@pytest.mark.slow
def test_send_exit_codes_against_orthanc(orthanc, samples_dir, tmp_path):
    assert medgen("export", samples_dir, "--out", tmp_path / "dicom", "--iod", "cr").returncode == 0
    target = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    refused = medgen("send", tmp_path / "dicom", "--to", target, "--calling-aet", "INTRUDER")
    rows = [line for line in refused.stderr.splitlines() if line.startswith("FAILED: ")]
    assert refused.returncode == 1 and len(rows) == 4 and all("Calling AE title not recognised" in r for r in rows)
    sent = medgen("send", tmp_path / "dicom", "--to", target, "--calling-aet", orthanc.scu_aet)
    assert sent.returncode == 0 and "4 sent, 0 failed, 0 skipped (of 4)" in sent.stdout
