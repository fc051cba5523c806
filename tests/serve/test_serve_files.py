"""The service's files without a server (fast): owner-only modes whatever the umask, result zips confined to the
job's folder, start-up cleanup and retention, keys listed and revoked."""

from __future__ import annotations

import datetime as dt
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from medgen.serve.auth import create_key, hash_key  # noqa: E402
from medgen.serve.jobs import Job, SQLiteJobStore  # noqa: E402
from medgen.serve.worker import RESULT_ZIP, Worker, zip_folder  # noqa: E402

REQUEST = {"bundle": "cxr", "class_label": "NORMAL", "num_images": 2, "steps": 10}


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.lstat().st_mode))


@pytest.fixture()
def open_umask() -> Iterator[None]:
    """The loosest umask a process can have: every mode below comes from the service, not the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_database_wal_shm_and_results_are_owner_only_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "state"
    store = SQLiteJobStore(data / "serve.db")
    store.add_job(Job(id="a" * 32, key_id="k", request=REQUEST))  # a write, so the WAL and SHM files exist
    worker = Worker(store, {}, data / "results")
    job = worker.job_dir("a" * 32)
    (job / "samples" / "NORMAL").mkdir(parents=True)
    (job / "samples" / "NORMAL" / "000000.png").write_bytes(b"png")
    zipped = zip_folder(job / "samples", job / RESULT_ZIP)
    from medgen.serve.private import make_private

    make_private(job)
    files = {p.name: mode(p) for p in [data / "serve.db", data / "serve.db-wal", data / "serve.db-shm", zipped,
                                         job / "samples" / "NORMAL" / "000000.png"]}
    folders = {p.name: mode(p) for p in [data, data / "results", job, job / "samples" / "NORMAL"]}
    assert set(files.values()) == {"0o600"}, files
    assert set(folders.values()) == {"0o700"}, folders


def test_a_loose_existing_database_is_tightened_on_open(tmp_path: Path) -> None:
    SQLiteJobStore(tmp_path / "serve.db").add_job(Job(id="b" * 32, key_id="k", request=REQUEST))
    for name in ("serve.db", "serve.db-wal", "serve.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).chmod(0o644)
    tmp_path.chmod(0o755)
    SQLiteJobStore(tmp_path / "serve.db")
    assert mode(tmp_path / "serve.db") == "0o600" and mode(tmp_path) == "0o700"


def test_zip_members_stay_inside_the_job_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for clients")
    job = tmp_path / "job"
    (job / "samples" / "NORMAL").mkdir(parents=True)
    (job / "samples" / "NORMAL" / "000000.png").write_bytes(b"png")
    (job / "samples" / "samples.jsonl").write_text("{}\n")
    (job / "samples" / "NORMAL" / "000000.npy").write_bytes(b"npy")  # skipped by suffix
    (job / "samples" / ".medgen-samples.lock").write_bytes(b"")  # the sampling job's lock file: not a result
    (job / "samples" / "link_to_file.png").symlink_to(outside / "secret.txt")
    (job / "samples" / "link_to_dir").symlink_to(outside, target_is_directory=True)
    (job / "samples" / "NORMAL" / "up.png").symlink_to("../../../outside/secret.txt")
    zipped = zip_folder(job / "samples", job / RESULT_ZIP)
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        content = b"".join(archive.read(n) for n in names)
    assert sorted(names) == ["NORMAL/000000.png", "samples.jsonl"]
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
    assert b"not for clients" not in content


def test_start_up_cleanup_removes_interrupted_and_stray_folders_and_expired_results(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "serve.db")
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).isoformat(timespec="milliseconds")
    recent = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).isoformat(timespec="milliseconds")
    jobs = {"1" * 32: ("succeeded", old), "2" * 32: ("succeeded", recent), "3" * 32: ("running", None),
            "4" * 32: ("failed", recent)}
    for job_id, (state, finished) in jobs.items():
        store.add_job(Job(id=job_id, key_id="k", request=REQUEST, status=state, finished_at=finished,
                          result=RESULT_ZIP if state == "succeeded" else None))
    worker = Worker(store, {}, tmp_path / "results", retention_days=30)
    for job_id in [*jobs, "f" * 32, "not-a-job"]:
        (worker.job_dir(job_id) / "samples").mkdir(parents=True)
    (worker.results_dir / ".result.zip.tmp").write_bytes(b"half")
    store.fail_interrupted("interrupted")

    removed = worker.clean_results()

    assert removed == {"stray": 5, "expired": 1}  # running, failed, unknown id, not-a-job, the temporary file
    assert sorted(p.name for p in worker.results_dir.iterdir()) == ["2" * 32]
    assert store.get_job("1" * 32).result is None and store.get_job("2" * 32).result == RESULT_ZIP
    assert Worker(store, {}, tmp_path / "results", retention_days=0).expire_results() == 0


def test_keys_are_listed_and_revoked_by_id_or_name(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "serve.db")
    alice, bob1, bob2 = (create_key(store, n, 2) for n in ("alice", "bob", "bob"))
    assert [(k.name, k.revoked) for k in store.list_keys()] == [("alice", False), ("bob", False), ("bob", False)]
    alice_id = store.key_by_hash(hash_key(alice)).id
    assert [k.name for k in store.revoke_keys(alice_id)] == ["alice"]
    assert store.key_by_hash(hash_key(alice)).revoked
    assert [k.name for k in store.revoke_keys("bob")] == ["bob", "bob"]
    assert all(store.key_by_hash(hash_key(k)).revoked for k in (bob1, bob2))
    assert store.revoke_keys("bob") == [] and store.revoke_keys("nobody") == []
