"""The job worker: a bounded queue and one thread that runs jobs one at a time with the bundle's kept pipeline.

A job writes its samples with :class:`~medgen.diffusion.sample_run.SampleRunner` (PNGs + ``samples.jsonl``),
optionally scores them with the bundle's quality gate, converts them with :func:`medgen.export.export_images`
when DICOM or NIfTI is asked for, and zips the result. Progress and cancellation ride on the pipeline's step
callback, so a cancel takes effect within one denoising step.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medgen.serve.catalog import DOMAIN_WEIGHTS_FILE, BundleInfo, PipelineCache
from medgen.serve.jobs import Job, JobStore, utcnow

logger = logging.getLogger(__name__)

RESULT_ZIP = "result.zip"
DEFAULT_SECONDS_PER_IMAGE_STEP = 0.05


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
    """Zip every file under ``folder`` (paths relative to it) into ``dest``, atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(tuple(skip)):
                zf.write(path, path.relative_to(folder).as_posix())
    os.replace(tmp, dest)
    return dest


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
    """

    def __init__(self, store: JobStore, bundles: dict[str, BundleInfo], results_dir: Path, queue_size: int = 16):
        self.store = store
        self.bundles = bundles
        self.results_dir = Path(results_dir)
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

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job_id = self.queue.get()
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

        try:
            metrics = self._generate(job, on_step)
        except JobCancelled:
            self.store.update_job(job_id, status="cancelled", finished_at=utcnow())
        except JobInterrupted:
            self.store.update_job(job_id, status="failed", retryable=True, finished_at=utcnow(),
                                  error="interrupted: the server stopped while the job ran; retry it")
        except (ValueError, FileNotFoundError) as err:
            self.store.update_job(job_id, status="failed", error=str(err), finished_at=utcnow())
        except Exception as err:
            logger.exception("job %s failed", job_id)
            self.store.update_job(job_id, status="failed", retryable=True, finished_at=utcnow(),
                                  error=f"{type(err).__name__}: {err}")
        else:
            self.store.update_job(job_id, status="succeeded", progress=100.0, metrics=metrics, result=RESULT_ZIP,
                                  images=metrics["images"], run_seconds=metrics["generation_seconds"],
                                  finished_at=utcnow())
        finally:
            self.current = None

    def _generate(self, job: Job, on_step: Callable[[int, int], None]) -> dict[str, Any]:
        from medgen.diffusion.sample_run import SampleRunner

        req, info = job.request, self.bundles[job.request["bundle"]]
        t0 = time.monotonic()
        pipeline = self.pipelines.get(req["bundle"])
        t1 = time.monotonic()
        out = self.job_dir(job.id)
        if out.exists():
            shutil.rmtree(out)
        samples = out / "samples"
        runner = SampleRunner(_ProgressPipeline(pipeline, on_step), samples, per_class=req["num_images"],
                              class_names=[req["class_label"]], seed=req["seed"], sampler=req["sampler"],
                              num_inference_steps=req["steps"], guidance_scale=req["guidance_scale"],
                              checkpoint=info.spec.weights, save_npy=False)
        runner.run()
        t2 = time.monotonic()
        self._check_cancel()
        records = read_samples(samples)
        metrics: dict[str, Any] = {
            "images": len(records),
            "generation_seconds": round(t2 - t1, 3),
            "seconds_per_image": round((t2 - t1) / max(len(records), 1), 4),
            "model_load_seconds": round(t1 - t0, 3),
            "checkpoint_sha256": records[0].get("checkpoint_sha256") if records else None,
        }
        if req.get("quality_check"):
            metrics["quality"] = self._quality(info, samples, records)
        self._check_cancel()
        self._package(req["output_format"], samples, out)
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
