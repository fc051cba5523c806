"""Send DICOM files to a PACS and query/retrieve them: DIMSE (pynetdicom) and DICOMweb (dicomweb-client).

Targets: ``dimse://AET@host:port`` and ``dicomweb://host:port/root`` (http; ``dicomwebs://`` for https).
DICOMweb credentials (HTTP basic) come from arguments, a credentials file, or ``MEDGEN_PACS_USER`` /
``MEDGEN_PACS_PASSWORD``. A file counts as sent only when the PACS acknowledged it (C-STORE success or warning
status; STOW-RS ReferencedSOPSequence); an unreachable or refusing PACS marks every file failed.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medgen.data.dicom import is_dicom
from medgen.export.paths import inside, resolved
from medgen.fileio import atomic_write

__all__ = [
    "DicomwebClient",
    "DimseClient",
    "PacsError",
    "PacsTarget",
    "SendResult",
    "collect_files",
    "expand_files",
    "load_credentials",
    "parse_target",
    "send",
    "write_report",
]

_STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}  # success, or success with coercion/elements discarded warnings
_ABORTS = ("A_ABORT_RQ", "A_ABORT", "A_P_ABORT")  # an abort from the PACS (PDU or primitive, pynetdicom names)


class PacsError(RuntimeError):
    """The PACS is unreachable, refused the association / request, or answered with a failure."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class SendResult:
    """Outcome for one file: ``status`` is ``sent``, ``failed`` or ``skipped``."""

    file: str
    target: str
    status: str
    sop_instance_uid: str = ""
    detail: str = ""
    attempts: int = 0


@dataclass
class PacsTarget:
    scheme: str  # "dimse" | "dicomweb"
    host: str
    port: int
    ae_title: str = ""
    url: str = ""

    def __str__(self) -> str:
        return f"dimse://{self.ae_title}@{self.host}:{self.port}" if self.scheme == "dimse" else self.url


def parse_target(target: str) -> PacsTarget:
    """Parse ``dimse://AET@host:port`` or ``dicomweb[s]://host[:port]/root`` (also plain http[s]:// URLs)."""
    parsed = urlparse(target)
    if parsed.scheme == "dimse":
        if not parsed.username or not parsed.hostname or not parsed.port:
            raise ValueError(f"bad DIMSE target {target!r}; expected dimse://AET@host:port")
        return PacsTarget("dimse", parsed.hostname, parsed.port, ae_title=parsed.username)
    if parsed.scheme in ("dicomweb", "dicomwebs", "http", "https"):
        if not parsed.hostname:
            raise ValueError(f"bad DICOMweb target {target!r}; expected dicomweb://host:port/root")
        http = "https" if parsed.scheme in ("dicomwebs", "https") else "http"
        port = parsed.port or (443 if http == "https" else 80)
        url = f"{http}://{parsed.hostname}:{port}{parsed.path.rstrip('/')}"
        return PacsTarget("dicomweb", parsed.hostname, port, url=url)
    raise ValueError(f"unknown target scheme in {target!r}; use dimse://AET@host:port or dicomweb://host:port/root")


def load_credentials(
    user: str | None = None, password: str | None = None, credentials_file: str | os.PathLike | None = None
) -> tuple[str, str] | None:
    """(user, password) from the arguments, else the file, else MEDGEN_PACS_USER / MEDGEN_PACS_PASSWORD; or None.

    The file is JSON ``{"user": ..., "password": ...}``, ``KEY=VALUE`` lines (``user``/``password`` or the env
    names), or one ``user:password`` line.
    """
    if user is not None and password is not None:
        return user, password
    if credentials_file is not None:
        text = Path(credentials_file).read_text().strip()
        values: dict[str, str] = {}
        if text.startswith("{"):
            values = {str(k).lower(): str(v) for k, v in json.loads(text).items()}
        elif "=" in text:
            for line in text.splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    key, value = line.split("=", 1)
                    values[key.strip().lower()] = value.strip().strip("'\"")
        elif ":" in text:
            values["user"], values["password"] = text.split(":", 1)
        file_user = values.get("user") or values.get("username") or values.get("medgen_pacs_user")
        file_password = values.get("password") or values.get("medgen_pacs_password")
        if not file_user or file_password is None:
            raise ValueError(f"{credentials_file}: no user/password found")
        return file_user, file_password
    env_user, env_password = os.environ.get("MEDGEN_PACS_USER"), os.environ.get("MEDGEN_PACS_PASSWORD")
    return (env_user, env_password or "") if env_user else None


def collect_files(
    paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(files, refused)``: files as given and folders expanded recursively (sorted; non-DICOM files inside
    folders left out), and ``(path, why)`` for each path refused because it leads out of its folder.

    Inside a folder, a file or subfolder that is a symlink resolving outside that folder is refused (subfolder
    links are not followed). With ``root``, every path given must also resolve inside ``root``.
    """
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if root is not None and not inside(root, p):
            refused.append((p, f"{resolved(p)} is outside {resolved(root)}"))
            continue
        if not p.is_dir():
            files.append(p)
            continue
        found = []
        for folder, dirs, names in os.walk(p):
            dirs.sort()
            for name in dirs:
                link = Path(folder) / name
                if link.is_symlink() and not inside(p, link):
                    refused.append((link, f"a symlink to {resolved(link)}, outside the folder {resolved(p)}"))
            for name in sorted(names):
                f = Path(folder) / name
                if not inside(p, f):
                    refused.append((f, f"a symlink to {resolved(f)}, outside the folder {resolved(p)}"))
                elif f.is_file() and is_dicom(f):
                    found.append(f)
        files.extend(sorted(found))
    return files, refused


def expand_files(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> list[Path]:
    """The files :func:`collect_files` keeps (what it refuses is left out)."""
    return collect_files(paths, root)[0]


def _header(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


class DimseClient:
    """DIMSE SCU (C-ECHO, C-STORE, C-FIND, C-GET) against one remote AE; one association per operation."""

    def __init__(self, ae_title: str, host: str, port: int, calling_aet: str = "MEDGEN", timeout: float = 10.0):
        self.ae_title, self.host, self.port, self.calling_aet, self.timeout = ae_title, host, port, calling_aet, timeout
        self._received: list = []

    @property
    def target(self) -> str:
        return f"dimse://{self.ae_title}@{self.host}:{self.port}"

    def _associate(self, contexts: list[tuple[str, list[str]]], ext_neg=None, handlers=None):
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        seen: list = []
        opened: list = []
        self._received = seen  # ACSE primitives and PDUs from the PACS on the latest association
        handlers = list(handlers or []) + [
            (evt.EVT_ACSE_RECV, lambda event: seen.append(event.primitive)),
            (evt.EVT_CONN_OPEN, lambda event: opened.append(True)),
            (evt.EVT_PDU_RECV, lambda event: seen.append(event.pdu)),
        ]
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, ext_neg=ext_neg, evt_handlers=handlers)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            rj = next((x for x in reversed(seen) if type(x).__name__ == "A_ASSOCIATE"), None)
            why = f"{rj.result_str}, {rj.source_str}: {rj.reason_str}" if rj is not None else "rejected"
            transient = rj is not None and rj.result_str == "Rejected Transient"
            raise PacsError(
                f"{self.target}: association rejected ({why}); check the called AE title {self.ae_title!r} and "
                f"that the PACS knows calling AE {self.calling_aet!r}",
                transient=transient,
            )
        if assoc.is_aborted and opened:
            raise PacsError(f"{self.target}: association aborted by the PACS", transient=True)
        raise PacsError(
            f"{self.target}: cannot connect to {self.host}:{self.port} (connection refused or timed out) - "
            "is the PACS running and the port right?",
            transient=True,
        )

    def echo(self) -> None:
        """C-ECHO; raises PacsError unless the PACS answers Success."""
        from pynetdicom.sop_class import Verification

        assoc = self._associate([(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            raise PacsError(f"{self.target}: C-ECHO failed (status {getattr(status, 'Status', 'none')})")

    def store(self, files: list[Path], retries: int = 3, backoff: float = 1.0) -> list[SendResult]:
        """C-STORE each file; transient failures (network, out of resources, abort) retried ``retries`` times."""
        results: dict[Path, SendResult] = {}
        headers: dict[Path, Dataset] = {}
        for path in files:
            try:
                headers[path] = _header(path)
                headers[path].SOPClassUID  # noqa: B018 - must exist
            except Exception as exc:
                results[path] = SendResult(str(path), self.target, "skipped", detail=f"not a DICOM file: {exc}")
        syntaxes: dict[str, set[str]] = {}
        for ds in headers.values():
            syntaxes.setdefault(ds.SOPClassUID, {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(
                ds.file_meta.TransferSyntaxUID
            )
        contexts = [(uid, sorted(ts)) for uid, ts in syntaxes.items()]
        pending = list(headers)
        for path in pending:
            results[path] = SendResult(str(path), self.target, "failed", str(headers[path].SOPInstanceUID))
        attempt, refusals = 0, 0
        while pending and attempt <= retries:
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            attempt += 1
            for path in pending:
                results[path].attempts = attempt
            try:
                assoc = self._associate(contexts)
            except PacsError as exc:
                for path in pending:
                    results[path].detail = str(exc)
                if not exc.transient:
                    break
                continue
            stored_here = 0
            try:
                for path in list(pending):
                    try:
                        status = assoc.send_c_store(path)
                    except (ValueError, RuntimeError, AttributeError) as exc:
                        results[path].detail = f"not sent: {exc}"
                        pending.remove(path)
                        continue
                    if not status:  # no response: association aborted or timed out -> retry the rest
                        by_pacs = any(type(p).__name__ in _ABORTS for p in self._received)
                        why = self._no_response(by_pacs, first=stored_here == 0)
                        for left in pending:
                            results[left].detail = why
                        refusals = refusals + 1 if by_pacs and stored_here == 0 else 0
                        break
                    stored_here += 1
                    code = int(status.Status)
                    if code in _STORE_OK:
                        results[path].status, results[path].detail = "sent", f"C-STORE status 0x{code:04X}"
                        pending.remove(path)
                    elif 0xA700 <= code <= 0xA7FF:  # out of resources: transient
                        results[path].detail = f"C-STORE status 0x{code:04X} (out of resources)"
                    else:
                        results[path].detail = f"C-STORE refused, status 0x{code:04X}"
                        pending.remove(path)
            finally:
                if assoc.is_established:
                    assoc.release()
            if refusals >= 2:  # aborted at the first C-STORE twice: a refusal, not a hiccup
                break
        return [results[p] for p in files]

    def _no_response(self, aborted: bool, first: bool) -> str:
        """Why a C-STORE got no answer, for every file not sent."""
        if aborted and first:
            return (f"{self.target}: association aborted by the PACS at the first C-STORE: it accepted calling AE "
                    f"{self.calling_aet!r} but refuses to store from it; allow C-STORE from this AE on the PACS "
                    "(Orthanc: DicomModalities \"AllowStore\" or DicomAlwaysAllowStore) or use an allowed "
                    "--calling-aet")
        if aborted:
            return f"{self.target}: association aborted by the PACS during C-STORE; not sent"
        return f"{self.target}: no C-STORE response within {self.timeout:g} s (timed out); not sent"

    def find(self, query: Dataset | dict, level: str = "STUDY") -> list[Dataset]:
        """C-FIND (Study Root) with ``query`` keys (empty values = return keys); returns matching identifiers."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        ds = _as_dataset(query, level)
        assoc = self._associate([(Find, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
        matches, final = [], None
        try:
            for status, identifier in assoc.send_c_find(ds, Find):
                final = status
                if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    matches.append(identifier)
        finally:
            assoc.release()
        if not final or final.Status != 0x0000:
            raise PacsError(f"{self.target}: C-FIND failed (status {getattr(final, 'Status', 'none')})")
        return matches

    def get(
        self, query: Dataset | dict, level: str = "SERIES", sop_classes: Iterable[str] | None = None
    ) -> list[Dataset]:
        """C-GET (Study Root) the instances matching ``query``; returns the received data sets (with file_meta)."""
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

        from medgen.export.dicom_writer import IODS

        classes = list(sop_classes or [uid for uid, _, _ in IODS.values()])
        received: list[Dataset] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        contexts = [(Get, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        contexts += [(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in classes]
        roles = [build_role(uid, scp_role=True) for uid in classes]
        assoc = self._associate(contexts, ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store)])
        final = None
        try:
            for status, _ in assoc.send_c_get(_as_dataset(query, level), Get):
                final = status or final
        finally:
            assoc.release()
        if not final or final.Status not in (0x0000, 0xB000):
            raise PacsError(f"{self.target}: C-GET failed (status {getattr(final, 'Status', 'none')})")
        return received


def _as_dataset(query: Dataset | dict, level: str) -> Dataset:
    if isinstance(query, Dataset):
        ds = query
    else:
        ds = Dataset()
        for key, value in query.items():
            setattr(ds, key, value)
    ds.QueryRetrieveLevel = level
    return ds


class DicomwebClient:
    """STOW-RS / QIDO-RS / WADO-RS against ``url`` (e.g. http://host:8042/dicom-web) with optional basic auth."""

    def __init__(self, url: str, credentials: tuple[str, str] | None = None, timeout: float = 20.0):
        from dicomweb_client import DICOMwebClient

        self.url = url.rstrip("/")
        session = requests.Session()
        if credentials:
            session.auth = credentials
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)

    def store(self, files: list[Path], retries: int = 3, backoff: float = 1.0, batch: int = 16) -> list[SendResult]:
        """STOW-RS in batches; HTTP 5xx / connection errors retried; per-file status from the STOW response."""
        results: dict[Path, SendResult] = {}
        datasets: dict[Path, Dataset] = {}
        for path in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    datasets[path] = pydicom.dcmread(path)
                uid = str(datasets[path].SOPInstanceUID)
                results[path] = SendResult(str(path), self.url, "failed", uid)
            except Exception as exc:
                results[path] = SendResult(str(path), self.url, "skipped", detail=f"not a DICOM file: {exc}")
        paths = list(datasets)
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            for attempt in range(1, retries + 2):
                for path in chunk:
                    results[path].attempts = attempt
                try:
                    response = self.client.store_instances([datasets[p] for p in chunk])
                except requests.HTTPError as exc:
                    code = exc.response.status_code if exc.response is not None else 0
                    hint = " (check MEDGEN_PACS_USER / MEDGEN_PACS_PASSWORD)" if code in (401, 403) else ""
                    for path in chunk:
                        results[path].detail = f"STOW-RS HTTP {code}{hint}"
                    if code < 500 or attempt > retries:
                        break
                except requests.RequestException as exc:
                    for path in chunk:
                        results[path].detail = f"{self.url}: cannot connect ({type(exc).__name__}) - is the PACS up?"
                    if attempt > retries:
                        break
                else:
                    _apply_stow_response(response, chunk, results)
                    break
                time.sleep(backoff * 2 ** (attempt - 1))
        return [results[p] for p in files]

    def search(self, study_instance_uid: str | None = None, series_instance_uid: str | None = None) -> list[dict]:
        """QIDO-RS instance search; DICOM JSON dicts."""
        return self.client.search_for_instances(
            study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid
        )

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """WADO-RS one instance."""
        return self.client.retrieve_instance(study_uid, series_uid, sop_uid)


def _apply_stow_response(response: Dataset, chunk: list[Path], results: dict[Path, SendResult]) -> None:
    by_uid = {results[p].sop_instance_uid: p for p in chunk}
    for item in response.get("ReferencedSOPSequence", []):
        path = by_uid.get(str(item.ReferencedSOPInstanceUID))
        if path is not None:
            results[path].status, results[path].detail = "sent", "STOW-RS stored"
    for item in response.get("FailedSOPSequence", []):
        path = by_uid.get(str(item.ReferencedSOPInstanceUID))
        if path is not None:
            results[path].detail = f"STOW-RS failure reason 0x{int(item.get('FailureReason', 0)):04X}"
    for path in chunk:
        if results[path].status != "sent" and not results[path].detail.startswith("STOW-RS failure"):
            results[path].detail = "not acknowledged in the STOW-RS response"


def send(
    files: Iterable[str | os.PathLike],
    target: str,
    user: str | None = None,
    password: str | None = None,
    credentials_file: str | os.PathLike | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    calling_aet: str = "MEDGEN",
    timeout: float = 10.0,
    root: str | os.PathLike | None = None,
) -> list[SendResult]:
    """Send files (folders expanded) to ``target``; one SendResult per file, ``sent`` only when acknowledged.

    A symlink leading out of a folder given (or any path outside ``root``, when given) is not read: it is
    reported ``skipped`` with the reason (:func:`collect_files`).
    """
    dest = parse_target(target)
    paths, refused = collect_files(files, root)
    skipped = [SendResult(str(p), str(dest), "skipped", detail=f"refused: {why}") for p, why in refused]
    if dest.scheme == "dimse":
        client = DimseClient(dest.ae_title, dest.host, dest.port, calling_aet=calling_aet, timeout=timeout)
        return client.store(paths, retries=retries, backoff=backoff) + skipped
    credentials = load_credentials(user, password, credentials_file)
    return DicomwebClient(dest.url, credentials, timeout=timeout).store(paths, retries=retries, backoff=backoff) \
        + skipped


def write_report(results: list[SendResult], path: str | os.PathLike) -> Path:
    """Per-file report: JSON (list of objects) if ``path`` ends in .json, else CSV; written through a temporary
    file and a rename (an existing symlink at ``path`` is replaced, not followed)."""
    path = Path(path)
    rows = [asdict(r) for r in results]
    if path.suffix.lower() == ".json":
        with atomic_write(path, "w") as f:
            f.write(json.dumps(rows, indent=2))
    else:
        with atomic_write(path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(SendResult.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(rows)
    return path
