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

from medgen.fileio import write_json_atomic
from medgen.folder_lock import is_lock_file
from medgen.serve.catalog import DOMAIN_WEIGHTS_FILE, BundleInfo, PipelineCache, public_reason
from medgen.serve.jobs import Job, JobStore, StepCost, utcnow
from medgen.serve.private import FILE_MODE, make_private, private_dir

logger = logging.getLogger(__name__)

RESULT_ZIP = "result.zip"
#: used only when a bundle has no measured cost and its start-up calibration failed: on the slow side for a
#: 64-pixel UNet on a busy CPU, so a first estimate errs long rather than short
PRIOR_SECONDS_PER_IMAGE_STEP = 0.5
PRIOR_OVERHEAD_SECONDS_PER_IMAGE = 0.1
CALIBRATION_STEPS = 2
#: after a few jobs each new one moves the kept cost by this fraction of the difference (a running estimate)
COST_UPDATE_WEIGHT = 0.25
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

    Member names are relative POSIX paths inside ``folder`` (its lock files left out); symlinks (to files or
    folders) are never followed or stored, and a file that resolves outside ``folder`` is left out, so nothing
    outside the job's folder can reach a result. Files are opened with ``O_NOFOLLOW``, so a file swapped for a
    symlink meanwhile is not read.
    """
    root = Path(folder).resolve()
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for base, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(base, d)))
            for name in sorted(files):
                path = Path(base) / name
                if name.endswith(tuple(skip)) or is_lock_file(name) or path.is_symlink() \
                        or not path.resolve().is_relative_to(root):
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
        self._running: tuple[float, float] | None = None  # (estimated seconds, monotonic start) of the running job
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

    def work_units(self, request: dict[str, Any], images: int | None = None) -> int:
        """Image-steps of a job: images x the network passes its sampler makes in ``steps`` (one per step for
        DDIM and the solvers; a score bundle's predictor-corrector makes two per level), doubled with guidance
        (the network runs on twice the batch)."""
        images = request["num_images"] if images is None else images
        return images * self.passes(request["bundle"], request["steps"], request.get("sampler")) \
            * (2 if request.get("guidance_scale", 1.0) != 1.0 else 1)

    def passes(self, bundle: str, steps: int, sampler: str | None = None) -> int:
        """Network passes per image for ``steps`` of ``sampler`` (None: the pipeline's default) with the bundle's
        loaded pipeline; ``steps`` for a pipeline that does not count them."""
        count = getattr(self.pipelines.get(bundle), "network_passes", None)
        return max(int(count(steps, sampler)), 1) if count is not None else int(steps)

    def cost(self, bundle: str) -> StepCost:
        """The bundle's kept :class:`StepCost` if it was measured on the weights served now, else the prior."""
        info = self.bundles.get(bundle)
        sha = (info.weights_sha256 if info else None) or ""
        kept = self.store.step_cost(bundle)
        if kept is not None and kept.weights_sha256 == sha:
            return kept
        return StepCost(bundle, sha, PRIOR_SECONDS_PER_IMAGE_STEP, PRIOR_OVERHEAD_SECONDS_PER_IMAGE, jobs=0)

    def calibrate(self, bundle: str, steps: int = CALIBRATION_STEPS) -> StepCost | None:
        """Time ``steps`` denoising steps of one image with the bundle's loaded pipeline (after one untimed step)
        and keep that as its cost until a job is measured; nothing is run when a cost measured on these weights is
        kept already. One image per pass is the slowest per image, so the first estimate errs long. Returns the
        kept cost (None if the pipeline could not run; the prior is then used)."""
        info = self.bundles[bundle]
        kept = self.store.step_cost(bundle)
        if kept is not None and kept.weights_sha256 == (info.weights_sha256 or ""):
            return kept
        try:
            pipeline = self.pipelines.get(bundle)
            pipeline.generate_batch([0], [0], 1)  # the first pass pays one-off set-up (kernels, memory layout)
            t0 = time.monotonic()
            pipeline.generate_batch([0], [0], steps)
            per_step = (time.monotonic() - t0) / self.passes(bundle, steps)
        except Exception as err:  # the jobs will report the problem; the estimate falls back to the prior
            logger.warning("bundle %s: calibration run failed (%s); estimates use the prior until a job ends",
                           bundle, err)
            return None
        cost = StepCost(bundle, info.weights_sha256 or "", round(per_step, 6), PRIOR_OVERHEAD_SECONDS_PER_IMAGE)
        self.store.save_step_cost(cost)
        logger.info("bundle %s: calibrated at %.4f s per image-step (%d steps, 1 image)", bundle, per_step, steps)
        return cost

    def learn(self, request: dict[str, Any], metrics: dict[str, Any]) -> StepCost:
        """Fold a finished job's measured cost into its bundle's kept cost: the first job replaces the calibration,
        the next few are averaged in, later ones move it by :data:`COST_UPDATE_WEIGHT`."""
        old = self.cost(request["bundle"])
        images = max(int(metrics["images"]), 1)
        per_step = metrics.get("seconds_per_image_step")  # the job's own figure, not one re-derived from rounded parts
        if per_step is None:
            per_step = metrics["generation_seconds"] / max(self.work_units(request, images), 1)
        overhead = max(metrics["total_seconds"] - metrics["generation_seconds"], 0.0) / images
        weight = 1.0 if old.jobs <= 0 else max(1.0 / (old.jobs + 1), COST_UPDATE_WEIGHT)
        new = StepCost(old.bundle, old.weights_sha256,
                       round(old.seconds_per_image_step + weight * (per_step - old.seconds_per_image_step), 6),
                       round(old.overhead_seconds_per_image + weight * (overhead - old.overhead_seconds_per_image), 6),
                       jobs=old.jobs + 1)
        self.store.save_step_cost(new)
        return new

    def own_estimate(self, request: dict[str, Any]) -> float:
        """Seconds a job with ``request`` will run, from its bundle's measured cost per image-step."""
        cost = self.cost(request["bundle"])
        return (cost.seconds_per_image_step * self.work_units(request)
                + cost.overhead_seconds_per_image * request["num_images"])

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
                if self._running is not None:
                    ahead += max(self._running[0] - (time.monotonic() - self._running[1]), 0.0)
                self._queued_estimates[job.id] = own
            self.queue.put_nowait(job.id)
        return max(round(own + ahead, 1), 0.1)  # a job that rounds to 0 s still takes some time

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
            with self._estimates_lock:
                self._running = (self._queued_estimates.pop(job_id, 0.0), time.monotonic())
            try:
                self._execute(job_id)
            except Exception:  # the loop must outlive any job
                logger.exception("job %s: unexpected worker error", job_id)
            finally:
                with self._estimates_lock:
                    self._running = None

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
            try:
                self.learn(job.request, metrics)
            except Exception:  # a failed estimate update must not fail a finished job
                logger.exception("job %s: could not update the cost estimate", job_id)
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
        records = read_samples(samples)
        metrics: dict[str, Any] = {
            "images": len(records),
            "generation_seconds": round(t2 - t1, 3),
            "seconds_per_image": round((t2 - t1) / max(len(records), 1), 4),
            "seconds_per_image_step": round((t2 - t1) / max(self.work_units(req, len(records)), 1), 6),
            "model_load_seconds": round(t1 - t0, 3),
            "bundle_version": info.version,
            "checkpoint_sha256": (records[0].get("checkpoint_sha256") if records else None) or info.weights_sha256,
        }
        if req.get("quality_check"):
            metrics["quality"] = self._quality(info, samples, records)
        self._check_cancel()
        self._package(req, samples, out, info)
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
        mode = "RGB" if info.channels == 3 else "L"  # the gate scores images as the bundle makes them
        images = np.stack([np.atleast_3d(np.asarray(Image.open(samples / r["file"]).convert(mode), dtype=np.float32))
                           .transpose(2, 0, 1) / 255.0 for r in records])
        scores = gate.score(extractor(images))
        passed = scores <= gate.threshold
        per_image = [{"file": r["file"], "seed": r["seed"], "realism_score": float(s), "passed": bool(p)}
                     for r, s, p in zip(records, scores, passed)]
        write_json_atomic({"threshold": gate.threshold, "images": per_image}, samples / "quality.json")
        return {"threshold": gate.threshold, "passed": int(passed.sum()), "failed": int((~passed).sum()),
                "pass_rate": float(passed.mean()) if len(passed) else 0.0}

    @staticmethod
    def _package(req: dict[str, Any], samples: Path, out: Path, info: BundleInfo) -> Path:
        """Zip the PNGs, or export them first (while ``samples.jsonl`` still names the weights, whose metadata
        gives the export its pixel spacing and anatomy); ``samples.jsonl`` is made public before zipping."""
        fmt = req["output_format"]
        if fmt == "png":
            public_samples(samples, info)
            return zip_folder(samples, out / RESULT_ZIP)
        from medgen.export.dicom_writer import export_images

        exported = out / fmt
        # no iod: sc for grey, vlm for colour (export_images decides from the images)
        options = {"iod": req.get("iod"), "bits": req.get("bits") or 16} if fmt == "dicom" else {}
        report = export_images(samples, exported, fmt=fmt, field_of_view_mm=req.get("field_of_view_mm"), **options)
        if report["errors"]:
            raise RuntimeError(f"export to {fmt} failed for {len(report['errors'])} image(s): {report['errors'][0][1]}")
        public_samples(samples, info)
        for name in ("samples.jsonl", "quality.json"):
            if (samples / name).is_file():
                shutil.copy2(samples / name, exported / name)
        return zip_folder(exported, out / RESULT_ZIP)
