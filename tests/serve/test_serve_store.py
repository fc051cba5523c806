"""The job store and key hashing without a server (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from medgen.serve.auth import create_key, hash_key  # noqa: E402
from medgen.serve.jobs import Job, SQLiteJobStore  # noqa: E402
from medgen.serve.metrics import quantile, render  # noqa: E402

REQUEST = {"bundle": "cxr", "class_label": "NORMAL", "num_images": 2, "steps": 10}


def test_jobs_survive_reopening_and_interrupted_ones_become_retryable(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "serve.db")
    for job_id, state in [("a" * 32, "succeeded"), ("b" * 32, "running"), ("c" * 32, "queued")]:
        store.add_job(Job(id=job_id, key_id="k1", request=REQUEST, status=state))
    store.update_job("a" * 32, images=2, run_seconds=1.5, metrics={"images": 2})

    reopened = SQLiteJobStore(tmp_path / "serve.db")
    assert sorted(reopened.fail_interrupted("interrupted: restart")) == ["b" * 32, "c" * 32]
    assert reopened.get_job("a" * 32).metrics == {"images": 2}
    for job_id in ("b" * 32, "c" * 32):
        job = reopened.get_job(job_id)
        assert (job.status, job.retryable, job.error) == ("failed", True, "interrupted: restart")
    assert reopened.counts_by_status() == {"succeeded": 1, "failed": 2}
    assert reopened.images_generated() == 2


def test_conditional_update_only_moves_jobs_in_the_given_states(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "serve.db")
    store.add_job(Job(id="d" * 32, key_id="k1", request=REQUEST))
    assert store.update_job("d" * 32, only_if_status=["queued"], status="running")
    assert not store.update_job("d" * 32, only_if_status=["queued"], status="cancelled")
    assert store.get_job("d" * 32).status == "running"
    assert store.count_active("k1") == 1 and store.count_active("k2") == 0
    with pytest.raises(ValueError):
        store.update_job("d" * 32, **{"status; DROP TABLE jobs": "x"})


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "serve.db")
    key = create_key(store, "alice", max_jobs=3)
    record = store.key_by_hash(hash_key(key))
    assert record is not None and (record.name, record.max_jobs) == ("alice", 3)
    assert key.encode() not in (tmp_path / "serve.db").read_bytes()
    assert store.key_by_hash(hash_key(key + "x")) is None


def test_metrics_quantiles_and_text(tmp_path: Path) -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([5.0], 0.99) == 5.0
    store = SQLiteJobStore(tmp_path / "serve.db")
    store.add_job(Job(id="e" * 32, key_id="k", request=REQUEST, status="succeeded", images=2, run_seconds=3.0))
    text = render(store, queue_depth=0, models_loaded=1)
    assert 'medgen_jobs{status="succeeded"} 1' in text
    assert 'medgen_generation_latency_seconds{quantile="0.99"} 3.0' in text
    assert "medgen_images_generated_total 2" in text
