"""The job worker: a bounded queue and one thread that runs jobs one at a time with the bundle's kept pipeline.

A job writes its samples with :class:`~medgen.diffusion.sample_run.SampleRunner` (PNGs + ``samples.jsonl``),
optionally scores them with the bundle's quality gate, converts them with :func:`medgen.export.export_images`
when DICOM or NIfTI is asked for, and zips the result. Progress and cancellation ride on the pipeline's step
callback, so a cancel takes effect within one denoising step.

What a client receives names the bundle, its version and the weights' SHA-256, never a server path: the
``checkpoint`` path that ``SampleRunner`` records is replaced in ``samples.jsonl`` before packaging, and error
messages have server paths replaced. Job folders are owner-only (0700/0600); a failed or cancelled job's folder
is removed, and :meth:`Worker.clean_results` removes stray folders at start and results past the retention time.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from medgen.serve.catalog import DOMAIN_WEIGHTS_FILE, BundleInfo, PipelineCache, public_reason
from medgen.serve.jobs import Job, JobStore, utcnow
from medgen.serve.private import FILE_MODE, make_private, private_dir

logger = logging.getLogger(__name__)

RESULT_ZIP = "result.zip"
DEFAULT_SECONDS_PER_IMAGE_STEP = 0.05
RETENTION_SWEEP_SECONDS = 3600.0


class QueueFull(RuntimeError):
    """The bounded queue has no room; the client should retry later."""


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    pass


class _ProgressPipeline:
    """A pipeline whose ``iter_generate`` reports every denoising step to ``callback`` (which may raise)."""

    def __init__(self, pipeline: Any, callback: Callable[[int, int], None]) -> None:
        self._pipeline, self._callback = pipeline, callback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def iter_generate(self, labels: Sequence[int], seeds: Sequence[int], num_inference_steps: int = 50,
                      guidance_scale: float = 1.0, sampler: str = "ddim", progress: bool = True,
                      callback: Callable[[int, int], None] | None = None) -> Iterator[Any]:
        return self._pipeline.iter_generate(labels, seeds, num_inference_steps, guidance_scale, sampler,
                                            progress=False, callback=self._callback)


def zip_folder(folder: Path, dest: Path, skip: Sequence[str] = (".npy",)) -> Path:
    """Zip every regular file under ``folder`` into ``dest`` (0600, written atomically).

    Member names are relative POSIX paths inside ``folder``; symlinks (to files or folders) are never followed or
    stored, and a file that resolves outside ``folder`` is left out, so nothing outside the job's folder can
    reach a result. Files are opened with ``O_NOFOLLOW``, so a file swapped for a symlink meanwhile is not read.
    """
    root = Path(folder).resolve()
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for base, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(base, d)))
            for name in sorted(files):
                path = Path(base) / name
                if name.endswith(tuple(skip)) or path.is_symlink() or not path.resolve().is_relative_to(root):
                    continue
                member = path.relative_to(root).as_posix()
                if member.startswith("/") or ".." in member.split("/"):
                    continue
                try:
                    fd_in = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                except OSError:
                    continue  # vanished or replaced by a symlink
                with os.fdopen(fd_in, "rb") as src:
                    st = os.fstat(src.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    info = zipfile.ZipInfo(member, time.localtime(st.st_mtime)[:6])
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o100644 << 16
                    zf.writestr(info, src.read())
    os.replace(tmp, dest)
    return dest


def public_samples(samples_dir: Path, info: BundleInfo) -> None:
    """Rewrite ``samples.jsonl`` for clients: the weights' ``checkpoint`` path becomes the bundle's name and
    version (the ``checkpoint_sha256`` stays)."""
    index = samples_dir / "samples.jsonl"
    if not index.is_file():
        return
    records = read_samples(samples_dir)
    for record in records:
        record.pop("checkpoint", None)
        record["bundle"], record["bundle_version"] = info.spec.name, info.version
        record.setdefault("checkpoint_sha256", info.weights_sha256)
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, index)


def read_samples(samples_dir: Path) -> list[dict[str, Any]]:
    index = samples_dir / "samples.jsonl"
    if not index.is_file():
        return []
    return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]


class Worker:
    """Runs queued jobs in one background thread.

    Args:
        store: the job store.
        bundles: the served bundles.
        results_dir: ``<results_dir>/<job_id>/`` holds a job's samples and result zip.
        queue_size: jobs that may wait; :meth:`submit` raises :class:`QueueFull` beyond.
        retention_days: finished jobs' results are deleted this long after they finished (0: kept).
    """

    def __init__(self, store: JobStore, bundles: dict[str, BundleInfo], results_dir: Path, queue_size: int = 16,
                 retention_days: float = 0.0):
        self.store = store
        self.bundles = bundles
        self.results_dir = private_dir(results_dir)
        self.retention_days = retention_days
        self._last_sweep = time.monotonic()
        self.pipelines = PipelineCache(bundles)
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self._submit_lock = threading.Lock()
        self._cancel = threading.Event()
        self._stopping = threading.Event()
        self.current: str | None = None
        self._queued_estimates: dict[str, float] = {}
        self._estimates_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="medgen-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it is marked failed and retryable) and end the thread."""
        self._stopping.set()
        self._cancel.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def job_dir(self, job_id: str) -> Path:
        return self.results_dir / job_id

    def own_estimate(self, request: dict[str, Any]) -> float:
        """Seconds a job with ``request`` will run, from past jobs of its bundle (a default rate before any)."""
        history = self.store.run_times(request["bundle"], limit=20)
        work = sum(images * steps for _, images, steps in history)
        rate = sum(s for s, _, _ in history) / work if work else DEFAULT_SECONDS_PER_IMAGE_STEP
        return rate * request["num_images"] * request["steps"] * (2 if request["guidance_scale"] != 1.0 else 1)

    def submit(self, job: Job) -> float:
        """Store ``job`` and queue it; returns the seconds until it should be done (its run plus the jobs ahead).
        Raises :class:`QueueFull` without storing anything."""
        with self._submit_lock:
            if self.queue.full():
                raise QueueFull(f"the job queue is full ({self.queue.maxsize} waiting); try again later")
            own = self.own_estimate(job.request)
            self.store.add_job(job)
            with self._estimates_lock:
                ahead = sum(self._queued_estimates.values())
                self._queued_estimates[job.id] = own
            self.queue.put_nowait(job.id)
        return round(own + ahead, 1)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask the running one to stop at its next step. Returns the updated job."""
        if self.store.update_job(job_id, only_if_status=["queued"], status="cancelled", cancel_requested=True,
                                 finished_at=utcnow()):
            self._forget_estimate(job_id)
        elif self.store.update_job(job_id, only_if_status=["running"], cancel_requested=True):
            if self.current == job_id:
                self._cancel.set()
        return self.store.get_job(job_id)

    def clean_results(self) -> dict[str, int]:
        """Remove what no client can fetch: folders and files in ``results_dir`` that are not the folder of a
        succeeded job with its result (interrupted, failed, cancelled, unknown), and results older than the
        retention time. Call it while no job runs (at start) or from the worker thread."""
        expired = self.expire_results()
        keep = {job_id for job_id, state in self.store.job_statuses().items() if state == "succeeded"}
        stray = 0
        for entry in list(self.results_dir.iterdir()):
            if entry.name in keep and entry.is_dir() and not entry.is_symlink():
                continue
            stray += 1
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        make_private(self.results_dir)
        if stray or expired:
            logger.info("results: removed %d interrupted or stray folder(s) and %d expired result(s)", stray, expired)
        return {"stray": stray, "expired": expired}

    def expire_results(self) -> int:
        """Delete the results of jobs that finished more than ``retention_days`` ago; return how many."""
        self._last_sweep = time.monotonic()
        if not self.retention_days or self.retention_days <= 0:
            return 0
        cutoff = (datetime.now(timezone.utc) - timedelta(days=self.retention_days)).isoformat(timespec="milliseconds")
        expired = self.store.finished_before(cutoff)
        for job_id in expired:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            self.store.update_job(job_id, result=None)
        return len(expired)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if time.monotonic() - self._last_sweep > RETENTION_SWEEP_SECONDS:
                try:
                    if count := self.expire_results():
                        logger.info("results: removed %d expired result(s)", count)
                except Exception:
                    logger.exception("results: the retention sweep failed")
            try:
                job_id = self.queue.get(timeout=60.0)
            except queue.Empty:
                continue
            if job_id is None:
                break
            self._forget_estimate(job_id)
            try:
                self._execute(job_id)
            except Exception:  # the loop must outlive any job
                logger.exception("job %s: unexpected worker error", job_id)

    def _check_cancel(self) -> None:
        if self._stopping.is_set():
            raise JobInterrupted()
        if self._cancel.is_set():
            raise JobCancelled()

    def _forget_estimate(self, job_id: str) -> None:
        with self._estimates_lock:
            self._queued_estimates.pop(job_id, None)

    def _execute(self, job_id: str) -> None:
        # ``current`` is set before the job shows as running, so a cancel that sees it running reaches this job
        self._cancel.clear()
        self.current, last = job_id, [0.0]
        if not self.store.update_job(job_id, only_if_status=["queued"], status="running", started_at=utcnow()):
            self.current = None
            return  # cancelled while it waited
        job = self.store.get_job(job_id)
        assert job is not None

        def on_step(done: int, total: int) -> None:
            self._check_cancel()
            now = time.monotonic()
            if now - last[0] > 0.25 or done == total:
                last[0] = now
                self.store.update_job(job_id, progress=round(95.0 * done / max(total, 1), 1))

        succeeded = False
        try:
            metrics = self._generate(job, on_step)
        except JobCancelled:
            self.store.update_job(job_id, status="cancelled", finished_at=utcnow())
        except JobInterrupted:
            self.store.update_job(job_id, status="failed", retryable=True, finished_at=utcnow(),
                                  error="interrupted: the server stopped while the job ran; retry it")
        except (ValueError, FileNotFoundError) as err:
            logger.error("job %s failed: %s", job_id, err)
            self.store.update_job(job_id, status="failed", error=self._public(err, job), finished_at=utcnow())
        except Exception as err:
            logger.exception("job %s failed", job_id)
            self.store.update_job(job_id, status="failed", retryable=True, finished_at=utcnow(),
                                  error=self._public(err, job))
        else:
            succeeded = True
            self.store.update_job(job_id, status="succeeded", progress=100.0, metrics=metrics, result=RESULT_ZIP,
                                  images=metrics["images"], run_seconds=metrics["generation_seconds"],
                                  finished_at=utcnow())
        finally:
            self.current = None
            if not succeeded:
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _public(self, err: BaseException, job: Job) -> str:
        """``err`` as a client may see it: one line, no server path."""
        info = self.bundles.get(job.request.get("bundle", ""))
        text = public_reason(err, info.spec) if info else f"{type(err).__name__}: {err}"
        for path in {str(self.results_dir), str(self.results_dir.resolve())}:
            text = text.replace(path, "<results>")
        return text

    def _generate(self, job: Job, on_step: Callable[[int, int], None]) -> dict[str, Any]:
        from medgen.diffusion.sample_run import SampleRunner

        req, info = job.request, self.bundles[job.request["bundle"]]
        t0 = time.monotonic()
        pipeline = self.pipelines.get(req["bundle"])
        t1 = time.monotonic()
        out = self.job_dir(job.id)
        if out.exists():
            shutil.rmtree(out)
        private_dir(out)
        samples = out / "samples"
        runner = SampleRunner(_ProgressPipeline(pipeline, on_step), samples, per_class=req["num_images"],
                              class_names=[req["class_label"]], seed=req["seed"], sampler=req["sampler"],
                              num_inference_steps=req["steps"], guidance_scale=req["guidance_scale"],
                              checkpoint=info.spec.weights, save_npy=False)
        runner.run()
        t2 = time.monotonic()
        self._check_cancel()
        public_samples(samples, info)
        records = read_samples(samples)
        metrics: dict[str, Any] = {
            "images": len(records),
            "generation_seconds": round(t2 - t1, 3),
            "seconds_per_image": round((t2 - t1) / max(len(records), 1), 4),
            "model_load_seconds": round(t1 - t0, 3),
            "bundle_version": info.version,
            "checkpoint_sha256": (records[0].get("checkpoint_sha256") if records else None) or info.weights_sha256,
        }
        if req.get("quality_check"):
            metrics["quality"] = self._quality(info, samples, records)
        self._check_cancel()
        self._package(req["output_format"], samples, out)
        make_private(out)
        metrics["total_seconds"] = round(time.monotonic() - t0, 3)
        return metrics

    def _quality(self, info: BundleInfo, samples: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Score every image with the bundle's fitted quality gate; record scores in ``quality.json``."""
        import numpy as np
        from PIL import Image

        from medgen.metrics.features import get_extractor
        from medgen.metrics.quality_gate import QualityGate

        gate = QualityGate.load(info.gate_path)
        extractor = get_extractor(info.gate_features(), info.gate_path.parent / DOMAIN_WEIGHTS_FILE)
        grey = np.stack([np.asarray(Image.open(samples / r["file"]).convert("L"), dtype=np.float32)[None] / 255.0
                         for r in records])
        scores = gate.score(extractor(grey))
        passed = scores <= gate.threshold
        per_image = [{"file": r["file"], "seed": r["seed"], "realism_score": float(s), "passed": bool(p)}
                     for r, s, p in zip(records, scores, passed)]
        (samples / "quality.json").write_text(json.dumps({"threshold": gate.threshold, "images": per_image}, indent=1))
        return {"threshold": gate.threshold, "passed": int(passed.sum()), "failed": int((~passed).sum()),
                "pass_rate": float(passed.mean()) if len(passed) else 0.0}

    @staticmethod
    def _package(fmt: str, samples: Path, out: Path) -> Path:
        if fmt == "png":
            return zip_folder(samples, out / RESULT_ZIP)
        from medgen.export.dicom_writer import export_images

        exported = out / fmt
        report = export_images(samples, exported, fmt=fmt)
        if report["errors"]:
            raise RuntimeError(f"export to {fmt} failed for {len(report['errors'])} image(s): {report['errors'][0][1]}")
        for name in ("samples.jsonl", "quality.json"):
            if (samples / name).is_file():
                shutil.copy2(samples / name, exported / name)
        return zip_folder(exported, out / RESULT_ZIP)
