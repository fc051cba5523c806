"""Plain functions behind ``medgen export`` and ``medgen send``, plus a bundle-friendly exporter component.

Exit codes (docs/dicom.md, "Exit codes"): 0 every image exported / every file acknowledged by the PACS; 1 some work
failed (a samples line refused or unreadable, nothing to export or send, a file the PACS did not acknowledge,
refused or could not be reached for, a path skipped); 2 the command could not start (a bad target, option value,
UID root or credentials file; a samples folder, samples.jsonl or path to send that does not exist; an output folder
another export is writing).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medgen.export.dicom_writer import DEFAULT_SEND_REPORT, export_images
from medgen.export.pacs import PacsError, parse_target, send, write_report
from medgen.folder_lock import holds_output_folder

__all__ = ["SampleExporter", "export_command", "send_command"]


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _print_send_summary(results: list, target: str) -> int:
    sent = sum(r.status == "sent" for r in results)
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    for r in failed + skipped:
        print(f"{r.status.upper()}: {r.file}: {r.detail}", file=sys.stderr)
    print(f"send to {target}: {sent} sent, {len(failed)} failed, {len(skipped)} skipped (of {len(results)})")
    return EXIT_OK if results and not failed and not skipped else EXIT_FAILED


def send_command(
    path: str | os.PathLike | list,
    to: str,
    credentials_file: str | os.PathLike | None = None,
    retries: int = 3,
    report: str | os.PathLike | None = None,
    calling_aet: str = "MEDGEN",
    timeout: float = 10.0,
    root: str | os.PathLike | None = None,
) -> int:
    """Send a file or folder of DICOM files to ``to``; print a summary, optionally write a CSV/JSON report.

    A symlink leading out of a folder given (or a path outside ``root``) is not read: it counts as skipped.
    Exit code: 0 all sent, 1 some file not sent or skipped (or nothing to send), 2 a bad target, a credentials
    file that cannot be read or a path that does not exist.
    """
    paths = path if isinstance(path, list | tuple) else [path]
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        print(f"error: {missing[0]}: no such file or folder; give DICOM files or folders to send", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = send(
            paths, to, credentials_file=credentials_file, retries=retries, calling_aet=calling_aet, timeout=timeout,
            root=root,
        )
    except (ValueError, OSError, PacsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if report:
        print(f"report: {write_report(results, report)}")
    return _print_send_summary(results, to)


@holds_output_folder("export", "export", "write to another folder (--out DIR)", exit_code=EXIT_USAGE)
def export_command(
    samples_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "dicom",
    iod: str | None = None,
    uid_root: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    bits: int = 16,
    body_part: str | None = None,
    send_to: str | None = None,
    credentials_file: str | os.PathLike | None = None,
    retries: int = 3,
    report: str | os.PathLike | None = None,
    pixel_spacing: float | tuple[float, float] | None = None,
    field_of_view_mm: float | tuple[float, float] | None = None,
    view_position: str | None = None,
    calling_aet: str = "MEDGEN",
) -> int:
    """Export a sampler output folder; with ``send_to`` (DICOM only) also send the files. Returns an exit code.

    ``out_dir`` is this process's while it runs: a second export into it would mix two exports' files and manifest."""
    if send_to and fmt != "dicom":
        print(f"error: --send-to needs --format dicom (got --format {fmt})", file=sys.stderr)
        return EXIT_USAGE
    try:
        if send_to:
            parse_target(send_to)  # a bad target stops before anything is written
        if credentials_file is not None and not Path(credentials_file).is_file():
            raise FileNotFoundError(f"--credentials {credentials_file}: no such file; give the PACS credentials file")
        if send_to:
            report = report or Path(out_dir) / DEFAULT_SEND_REPORT
        summary = export_images(
            samples_dir,
            out_dir,
            fmt=fmt,
            iod=iod,
            uid_root=uid_root,
            patient_name=patient_name,
            patient_id=patient_id,
            bits=bits,
            body_part=body_part,
            pixel_spacing=pixel_spacing,
            field_of_view_mm=field_of_view_mm,
            view_position=view_position,
            also_writes=[report] if report else [],
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for _, message in summary["errors"]:
        print(f"ERROR: {message}", file=sys.stderr)
    deleted = len(summary["left_out"])
    print(
        f"exported {summary['written']} {fmt} file(s) to {out_dir}, {len(summary['errors'])} error(s)"
        + (f", {deleted} image(s) deleted from the samples folder left out" if deleted else "")
        + f"; manifest: {summary['manifest']}"
    )
    code = EXIT_FAILED if summary["errors"] or not summary["written"] else EXIT_OK
    if send_to and summary["files"]:
        files = [str(p) for p in summary["files"]]
        code = max(code, send_command(files, send_to, credentials_file, retries, report, calling_aet=calling_aet,
                                      root=out_dir))
    return code


class SampleExporter:
    """Bundle component: ``_target_: medgen.export.cli_commands.SampleExporter`` then call with the samples dir.

    Example (inference.yaml)::

        export:
          _target_: medgen.export.cli_commands.SampleExporter
          out_dir: "$@bundle_root + '/outputs/dicom'"
          fmt: dicom
          iod: cr
          send_to: null            # e.g. dimse://ORTHANC@pacs:4242 or dicomweb://pacs:8042/dicom-web
    """

    def __init__(self, out_dir: str, fmt: str = "dicom", iod: str | None = None, send_to: str | None = None, **kwargs):
        self.out_dir, self.fmt, self.iod, self.send_to, self.kwargs = out_dir, fmt, iod, send_to, kwargs

    def __call__(self, samples_dir: str | os.PathLike) -> int:
        return export_command(
            samples_dir, self.out_dir, fmt=self.fmt, iod=self.iod, send_to=self.send_to, **self.kwargs
        )
