"""Export writes only inside --out and reads only inside the samples folder; send reads only inside the folders it
is given. A hostile samples.jsonl (``..``, absolute paths, symlinks out) or a booby-trapped output folder is refused
line by line while the rest is exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medgen.export.cli_commands import export_command, send_command
from medgen.export.dicom_writer import export_images
from medgen.export.pacs import collect_files, send
from medgen.export.paths import UnsafePathError, confined_path

REPO = Path(__file__).resolve().parents[2]


def add_lines(samples: Path, files: list[str]) -> None:
    """Append sample records naming ``files`` (otherwise like the first record)."""
    index = samples / "samples.jsonl"
    first = json.loads(index.read_text().splitlines()[0])
    with open(index, "a") as f:
        for name in files:
            f.write(json.dumps({**first, "file": name}) + "\n")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hostile(samples_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The samples folder with three hostile lines after its four good ones, and a folder beside it to protect."""
    outside = tmp_path / "escape"
    outside.mkdir()
    good_png = next(samples_dir.glob("NORMAL/*.png"))
    (outside / "x.png").write_bytes(good_png.read_bytes())
    (samples_dir / "NORMAL" / "link.png").symlink_to(outside / "x.png")
    add_lines(samples_dir, ["../escape/x.png", str(outside / "x.png"), "NORMAL/link.png"])
    return samples_dir, outside


def test_cli_export_refuses_traversal_absolute_and_symlink_lines_and_exports_the_rest(hostile, tmp_path):
    samples, outside = hostile
    before = snapshot(tmp_path / "escape")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "medgen.cli", "export", str(samples), "--out", str(out),
                          "--format", "png"], capture_output=True, text=True, cwd=REPO, timeout=600)
    print(run.stdout + run.stderr)
    assert run.returncode == 1  # docs/dicom.md: 1 = some file failed
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR:")]
    index = samples / "samples.jsonl"
    assert errors == [
        f"ERROR: {index}:5: refused '../escape/x.png': '..' leads out of the samples folder {samples}; "
        "give a path inside it",
        f"ERROR: {index}:6: refused '{outside / 'x.png'}': an absolute path; give a path relative to the samples "
        f"folder {samples}",
        f"ERROR: {index}:7: refused 'NORMAL/link.png': a symlink to {outside.resolve() / 'x.png'}, outside the "
        f"samples folder {samples.resolve()}",
    ]
    assert "exported 4 png file(s)" in run.stdout and "3 error(s)" in run.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "NORMAL/000000_s0.png", "NORMAL/000001_s1.png", "PNEUMONIA/000002_s2.png", "PNEUMONIA/000003_s3.png",
        "manifest.csv",
    ]  # fmt: skip
    assert snapshot(tmp_path / "escape") == before  # nothing written next to the output folder
    assert not (tmp_path / "escape" / "x.dcm").exists()


@pytest.mark.parametrize("fmt", ["dicom", "png16", "nifti"])
def test_every_format_confines_its_output(hostile, tmp_path, fmt):
    samples, _ = hostile
    summary = export_images(samples, tmp_path / "out", fmt=fmt)
    assert summary["written"] == 4 and [n for n, _ in summary["errors"]] == [5, 6, 7]
    assert all(Path(os.path.realpath(f)).is_relative_to((tmp_path / "out").resolve()) for f in summary["files"])
    assert sorted(p.name for p in (tmp_path / "escape").iterdir()) == ["x.png"]


def test_output_folder_symlinks_are_not_followed(samples_dir, tmp_path):
    """A class folder in --out that links elsewhere refuses its lines; a manifest.csv that links elsewhere is
    replaced, its target untouched."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("do not overwrite")
    (out / "PNEUMONIA").symlink_to(elsewhere, target_is_directory=True)
    (out / "manifest.csv").symlink_to(elsewhere / "keep.txt")
    summary = export_images(samples_dir, out, fmt="png")
    assert summary["written"] == 2
    assert [m.split(": ", 1)[1] for _, m in summary["errors"]] == [
        f"refused 'PNEUMONIA/000002_s2.png': a symlink to {elsewhere.resolve() / '000002_s2.png'}, outside the "
        f"output folder {out.resolve()}",
        f"refused 'PNEUMONIA/000003_s3.png': a symlink to {elsewhere.resolve() / '000003_s3.png'}, outside the "
        f"output folder {out.resolve()}",
    ]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (elsewhere / "keep.txt").read_text() == "do not overwrite"
    assert not (out / "manifest.csv").is_symlink() and "file,source,line" in (out / "manifest.csv").read_text()
    assert export_command(samples_dir, out, fmt="png") == 1


def test_float_copy_linking_out_is_refused(samples_dir, tmp_path):
    """The .npy read instead of a PNG must stay inside the samples folder too."""
    npy = next(samples_dir.glob("NORMAL/*.npy"))
    (tmp_path / "other.npy").write_bytes(npy.read_bytes())
    npy.unlink()
    npy.symlink_to(tmp_path / "other.npy")
    summary = export_images(samples_dir, tmp_path / "out", fmt="png")
    assert summary["written"] == 3
    ((_, message),) = summary["errors"]
    assert f"refused '{npy.name}': a symlink to {(tmp_path / 'other.npy').resolve()}" in message


@pytest.mark.parametrize("rel, why", [
    ("../x.png", "'..' leads out"), ("a/../../x.png", "'..' leads out"), ("a/..\\..\\x.png", "'..' leads out"),
    ("/etc/passwd", "an absolute path"), ("C:\\x.png", "an absolute path"), ("", "not a file name"),
    (None, "not a file name"), ("a\x00.png", "NUL"),
])  # fmt: skip
def test_confined_path_rules(tmp_path, rel, why):
    with pytest.raises(UnsafePathError, match=why):
        confined_path(tmp_path, rel)
    assert confined_path(tmp_path, "NORMAL/a.png") == tmp_path / "NORMAL" / "a.png"


# --- send: only what lies inside the folders given -------------------------------------------------------------------


@pytest.fixture
def send_folder(samples_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A folder of two exported DICOMs plus a file link and a folder link to DICOMs outside it."""
    summary = export_images(samples_dir, tmp_path / "dicom", fmt="dicom")
    folder, outside = tmp_path / "send", tmp_path / "private"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for f in summary["files"][:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    for f in summary["files"][2:]:
        (outside / f.name).write_bytes(f.read_bytes())
    (folder / "sub" / "leak.dcm").symlink_to(outside / summary["files"][2].name)
    (folder / "private").symlink_to(outside, target_is_directory=True)
    return folder, outside


def test_send_collects_only_files_inside_the_folder(send_folder):
    folder, outside = send_folder
    files, refused = collect_files([folder])
    assert [f.parent for f in files] == [folder, folder]
    assert sorted((p.relative_to(folder).as_posix(), why.split(",")[0]) for p, why in refused) == [
        ("private", f"a symlink to {outside.resolve()}"),
        ("sub/leak.dcm", f"a symlink to {next(outside.glob('*2.dcm')).resolve()}"),
    ]
    files, refused = collect_files([folder / "a.dcm", folder], root=folder / "sub")
    assert files == [] and [p for p, _ in refused] == [folder / "a.dcm", folder]


@pytest.mark.slow
def test_send_to_real_pacs_stores_only_files_inside_the_folder(orthanc, send_folder, capsys):
    folder, outside = send_folder
    target = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    results = send([folder], target, calling_aet=orthanc.scu_aet)
    assert sorted(r.status for r in results) == ["sent", "sent", "skipped", "skipped"]
    assert all("outside the folder" in r.detail for r in results if r.status == "skipped")
    import pydicom

    for f in outside.glob("*.dcm"):
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert orthanc.rest("/tools/lookup", method="POST", data=uid).json() == []  # never read, never sent
    capsys.readouterr()
    assert send_command(folder, target, calling_aet=orthanc.scu_aet) == 1  # skipped files: exit code 1
    assert "2 sent, 0 failed, 2 skipped (of 4)" in capsys.readouterr().out
