"""The job store: one small interface (:class:`JobStore`) and its embedded SQLite implementation.

The store holds jobs and API-key hashes, so that a restart loses nothing: finished results stay downloadable and
jobs cut short by the restart are marked failed with ``retryable = True``. Another database (PostgreSQL) would
implement the same methods; nothing else in the service touches SQL.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medgen.serve.models import ACTIVE_STATES
from medgen.serve.private import FILE_MODE, private_file


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    """A generation job as stored; ``request`` is the validated request body."""

    id: str
    key_id: str
    request: dict[str, Any]
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    retryable: bool = False
    cancel_requested: bool = False
    metrics: dict[str, Any] | None = None
    result: str | None = None
    created_at: str = field(default_factory=utcnow)
    started_at: str | None = None
    finished_at: str | None = None
    run_seconds: float | None = None
    images: int = 0
    retry_of: str | None = None


@dataclass
class KeyRecord:
    """An API key as stored: only the SHA-256 of the key, never the key."""

    id: str
    name: str
    key_hash: str
    max_jobs: int
    created_at: str = field(default_factory=utcnow)
    revoked: bool = False


@dataclass
class StepCost:
    """What a bundle's jobs cost on this server, kept per bundle and weights file and updated after each job.

    A job of ``n`` images whose sampler passes each image through the network ``s`` times (the steps for DDIM and
    the solvers, about twice the levels for a score bundle's predictor-corrector; doubled with guidance, which runs
    the network on twice the batch) should take ``seconds_per_image_step * n * s + overhead_seconds_per_image * n``;
    ``jobs`` counts the finished jobs behind the figures (0: a start-up calibration only)."""

    bundle: str
    weights_sha256: str
    seconds_per_image_step: float
    overhead_seconds_per_image: float
    jobs: int = 0
    updated_at: str = field(default_factory=utcnow)


class JobStore(abc.ABC):
    """What the service needs from a database."""

    @abc.abstractmethod
    def add_job(self, job: Job) -> None: ...

    @abc.abstractmethod
    def get_job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def update_job(self, job_id: str, only_if_status: Iterable[str] | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``only_if_status`` only when the job is in one of those states. True if updated."""

    @abc.abstractmethod
    def count_active(self, key_id: str) -> int: ...

    @abc.abstractmethod
    def counts_by_status(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def run_times(self, bundle: str | None = None, limit: int = 1000) -> list[tuple[float, int, int]]:
        """``(run_seconds, images, steps)`` of the latest succeeded jobs."""

    @abc.abstractmethod
    def images_generated(self) -> int: ...

    @abc.abstractmethod
    def step_cost(self, bundle: str) -> StepCost | None:
        """The bundle's kept :class:`StepCost`, or None before any."""

    @abc.abstractmethod
    def save_step_cost(self, cost: StepCost) -> None:
        """Keep ``cost`` as its bundle's (replacing the one before)."""

    @abc.abstractmethod
    def fail_interrupted(self, message: str) -> list[str]:
        """Mark every queued or running job failed and retryable; return their ids."""

    @abc.abstractmethod
    def add_key(self, key: KeyRecord) -> None: ...

    @abc.abstractmethod
    def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    def list_keys(self) -> list[KeyRecord]: ...

    @abc.abstractmethod
    def revoke_keys(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the key with this id, else every key with this name; return the keys revoked now."""

    @abc.abstractmethod
    def finished_before(self, cutoff: str) -> list[str]:
        """Ids of finished jobs that still have a result and finished before ``cutoff`` (ISO time)."""

    @abc.abstractmethod
    def job_statuses(self) -> dict[str, str]:
        """Job id -> status, for every job (to tell a job's folder from a stray one)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0, error TEXT, retryable INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, metrics TEXT, result TEXT, created_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT, run_seconds REAL, images INTEGER NOT NULL DEFAULT 0, retry_of TEXT
);
CREATE INDEX IF NOT EXISTS jobs_key_status ON jobs (key_id, status);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS step_costs (
    bundle TEXT PRIMARY KEY, weights_sha256 TEXT NOT NULL, seconds_per_image_step REAL NOT NULL,
    overhead_seconds_per_image REAL NOT NULL, jobs INTEGER NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, max_jobs INTEGER NOT NULL,
    created_at TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
"""
_JSON_FIELDS = ("request", "metrics")
_BOOL_FIELDS = ("retryable", "cancel_requested")


class SQLiteJobStore(JobStore):
    """:class:`JobStore` in one SQLite file (WAL mode, so status reads do not wait for the worker's writes).

    The file is created 0600 in a 0700 folder before SQLite opens it; SQLite gives its ``-wal`` and ``-shm``
    files the database file's mode, so they are 0600 too."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        private_file(self.path)
        for side in ("-wal", "-shm"):
            extra = Path(f"{self.path}{side}")
            if extra.is_file() and not extra.is_symlink():
                extra.chmod(FILE_MODE)
        self._local = threading.local()
        with self._conn() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """One connection per thread, one transaction per ``with``."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        with db:
            yield db

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        for name in _JSON_FIELDS:
            if name in out and out[name] is not None:
                out[name] = json.dumps(out[name])
        for name in _BOOL_FIELDS:
            if name in out:
                out[name] = int(bool(out[name]))
        return out

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name]) if data[name] is not None else None
        for name in _BOOL_FIELDS:
            data[name] = bool(data[name])
        return Job(**data)

    def add_job(self, job: Job) -> None:
        data = self._encode(asdict(job))
        cols = ", ".join(data)
        with self._conn() as db:
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(data))})", tuple(data.values()))

    def get_job(self, job_id: str) -> Job | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def update_job(self, job_id: str, only_if_status: Iterable[str] | None = None, **fields: Any) -> bool:
        unknown = set(fields) - set(Job.__dataclass_fields__) - {"id"}
        if unknown or "id" in fields:
            raise ValueError(f"cannot update job fields {sorted(unknown | ({'id'} & set(fields)))}")
        data = self._encode(fields)
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in data)} WHERE id = ?"
        args: list[Any] = [*data.values(), job_id]
        if only_if_status is not None:
            states = list(only_if_status)
            sql += f" AND status IN ({', '.join('?' * len(states))})"
            args += states
        with self._conn() as db:
            return db.execute(sql, args).rowcount > 0

    def count_active(self, key_id: str) -> int:
        with self._conn() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE key_id = ? AND status IN (?, ?)",
                              (key_id, *ACTIVE_STATES)).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        with self._conn() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def run_times(self, bundle: str | None = None, limit: int = 1000) -> list[tuple[float, int, int]]:
        with self._conn() as db:
            rows = db.execute("SELECT run_seconds, images, request FROM jobs WHERE status = 'succeeded' "
                              "AND run_seconds IS NOT NULL ORDER BY finished_at DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for seconds, images, request in rows:
            req = json.loads(request)
            if bundle is None or req.get("bundle") == bundle:
                out.append((float(seconds), int(images), int(req.get("steps", 1))))
        return out

    def images_generated(self) -> int:
        with self._conn() as db:
            return int(db.execute("SELECT COALESCE(SUM(images), 0) FROM jobs WHERE status = 'succeeded'")
                       .fetchone()[0])

    def step_cost(self, bundle: str) -> StepCost | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM step_costs WHERE bundle = ?", (bundle,)).fetchone()
        return StepCost(**dict(row)) if row else None

    def save_step_cost(self, cost: StepCost) -> None:
        data = asdict(cost)
        with self._conn() as db:
            db.execute(f"INSERT OR REPLACE INTO step_costs ({', '.join(data)}) VALUES ({', '.join('?' * len(data))})",
                       tuple(data.values()))

    def fail_interrupted(self, message: str) -> list[str]:
        with self._conn() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status IN (?, ?)", ACTIVE_STATES)]
            db.execute("UPDATE jobs SET status = 'failed', retryable = 1, error = ?, finished_at = ? "
                       "WHERE status IN (?, ?)", (message, utcnow(), *ACTIVE_STATES))
        return ids

    def add_key(self, key: KeyRecord) -> None:
        data = asdict(key)
        data["revoked"] = int(data["revoked"])
        with self._conn() as db:
            db.execute(f"INSERT INTO api_keys ({', '.join(data)}) VALUES ({', '.join('?' * len(data))})",
                       tuple(data.values()))

    @staticmethod
    def _key(row: sqlite3.Row) -> KeyRecord:
        data = dict(row)
        data["revoked"] = bool(data["revoked"])
        return KeyRecord(**data)

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return self._key(row) if row else None

    def list_keys(self) -> list[KeyRecord]:
        with self._conn() as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY rowid").fetchall()
        return [self._key(r) for r in rows]

    def revoke_keys(self, name_or_id: str) -> list[KeyRecord]:
        with self._conn() as db:
            rows = db.execute("SELECT * FROM api_keys WHERE id = ? AND revoked = 0", (name_or_id,)).fetchall()
            if not rows and not db.execute("SELECT 1 FROM api_keys WHERE id = ?", (name_or_id,)).fetchone():
                rows = db.execute("SELECT * FROM api_keys WHERE name = ? AND revoked = 0", (name_or_id,)).fetchall()
            db.executemany("UPDATE api_keys SET revoked = 1 WHERE id = ?", [(r["id"],) for r in rows])
        return [self._key(r) for r in rows]

    def finished_before(self, cutoff: str) -> list[str]:
        with self._conn() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
                              "AND result IS NOT NULL AND finished_at < ?", (cutoff,)).fetchall()
        return [r[0] for r in rows]

    def job_statuses(self) -> dict[str, str]:
        with self._conn() as db:
            return {job_id: state for job_id, state in db.execute("SELECT id, status FROM jobs")}
