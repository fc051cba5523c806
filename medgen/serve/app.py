"""The REST service: ``create_app(settings)`` builds the FastAPI app (OpenAPI at ``/docs``, Swagger UI on the local
copy of its files from ``fastapi-offline``; web page at ``/ui``).

Every route but ``/healthz`` and the static page and docs needs an API key; a job and its images are visible
only to the key that made it (others get 404, as if it did not exist). Paths on disk are built only from
server-made job ids (checked against ``[0-9a-f]{32}``) and from ``samples.jsonl`` entries checked to lie
inside the job's folder. Bodies over ``settings.max_body_bytes`` are refused before they are read, errors echo at
most a short prefix of the input, and every response carries a strict Content-Security-Policy and no-framing
headers (:mod:`medgen.serve.guards`). Responses name bundles, versions and weight hashes, never server paths.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated, Any, NoReturn

from fastapi import Depends, FastAPI, HTTPException, Path, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from medgen import __version__
from medgen.serve import metrics as prom
from medgen.serve.auth import require_key
from medgen.serve.catalog import BundleInfo, available_samplers, open_bundle, output_formats
from medgen.serve.guards import BodyLimit, SecurityHeaders, prefix, validation_error
from medgen.serve.jobs import Job, KeyRecord, SQLiteJobStore, new_job_id
from medgen.serve.models import GenerateRequest, ImageInfo, JobCreated, JobInfo, ModelInfo, ModelList
from medgen.serve.settings import ServeSettings
from medgen.serve.worker import RESULT_ZIP, QueueFull, Worker, read_samples

logger = logging.getLogger(__name__)

STATIC = FsPath(__file__).resolve().parent / "static"
API = "/api/v1"
DOCS_ASSETS = "/docs/static"
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id from POST /api/v1/generate")]
Key = Annotated[KeyRecord, Depends(require_key)]
KEYED: dict[int | str, dict[str, Any]] = {401: {"description": "missing, invalid or revoked API key"}}


def invalid(field: str, message: str, allowed: list[Any] | None = None) -> NoReturn:
    """A 422 shaped like FastAPI's own validation errors, with the allowed values when there is a list."""
    detail: dict[str, Any] = {"loc": ["body", field], "msg": message, "type": "value_error"}
    if allowed is not None:
        detail["allowed"] = allowed
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[detail])


def colour_mismatch(bundle: str, channels: int, iod: str) -> str:
    """One line: the bundle's images do not fit ``iod`` (grey vs RGB colour), and the iods that do."""
    from medgen.export.dicom_writer import check_iod_channels

    try:
        check_iod_channels(iod, channels, f"bundle {bundle} makes images that are", option="iod")
    except ValueError as err:
        return str(err)
    return f"iod {iod} does not fit bundle {bundle}"


def docs_assets() -> FsPath | None:
    """The Swagger UI files (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``favicon.png``) that the
    ``fastapi-offline`` package ships, or None when it is not installed; FastAPI itself links them from a CDN."""
    try:
        from importlib.resources import files

        folder = FsPath(str(files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def docs_page(openapi_url: str, title: str, assets_url: str = DOCS_ASSETS) -> HTMLResponse:
    """FastAPI's Swagger UI page on the local copy of its files, with a policy that allows only this server's
    files and exactly the page's own inline script (by hash), nothing else inline and nothing from elsewhere."""
    page = get_swagger_ui_html(openapi_url=openapi_url, title=title,
                               swagger_js_url=f"{assets_url}/swagger-ui-bundle.js",
                               swagger_css_url=f"{assets_url}/swagger-ui.css",
                               swagger_favicon_url=f"{assets_url}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})
    html = bytes(page.body).decode("utf-8")
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
                      for code in re.findall(r"<script>(.*?)</script>", html, re.S))
    csp = (f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


def create_app(settings: ServeSettings) -> FastAPI:
    """The service over ``settings.data_dir`` serving ``settings.bundles``; the worker starts with the app.

    Each bundle's pipeline is built now, so a missing, truncated or mismatched weights file shows at once as an
    unavailable bundle (``/api/v1/models``, ``/healthz``), not at the first job; a bundle whose weights have no
    measured cost yet runs two denoising steps now to calibrate ``estimated_time_seconds``."""
    store = SQLiteJobStore(settings.db_path)
    bundles: dict[str, BundleInfo] = {}
    worker = Worker(store, bundles, settings.results_dir, settings.queue_size, settings.retention_days)
    for name, spec in settings.bundles.items():
        bundles[name] = open_bundle(spec, worker.pipelines)
        if bundles[name].available:
            worker.calibrate(name)
    samplers = available_samplers()
    formats = output_formats()
    submit_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        lost = store.fail_interrupted("interrupted: the server restarted before the job finished; retry it")
        if lost:
            logger.warning("marked %d interrupted job(s) failed and retryable: %s", len(lost), ", ".join(lost))
        worker.clean_results()
        worker.start()
        yield
        worker.stop()
        store.fail_interrupted("interrupted: the server stopped before the job finished; retry it")

    app = FastAPI(title="medgen", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Class-conditional synthetic medical images from MONAI diffusion bundles. "
                              "Send the API key as `X-API-Key` or `Authorization: Bearer` (on this page: "
                              "**Authorize**).")
    app.state.store, app.state.worker, app.state.settings = store, worker, settings
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")
    swagger_files = docs_assets()
    if swagger_files is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_files), name="docs-static")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s carry the headers too
    app.add_exception_handler(RequestValidationError, validation_error)

    def owned_job(job_id: str, key: KeyRecord) -> Job:
        job = store.get_job(job_id)
        if job is None or job.key_id != key.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
        return job

    def job_info(job: Job) -> JobInfo:
        done = job.status == "succeeded"
        return JobInfo(job_id=job.id, status=job.status, progress=job.progress, request=job.request,
                       created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                       error=job.error, retryable=job.retryable, cancel_requested=job.cancel_requested,
                       metrics=job.metrics, retry_of=job.retry_of,
                       result_url=f"{API}/jobs/{job.id}/result" if done and job.result else None,
                       images_url=f"{API}/jobs/{job.id}/images" if done and job.result else None)

    def validate(req: GenerateRequest) -> None:
        if req.bundle not in bundles:
            invalid("bundle", f"unknown bundle {prefix(req.bundle)!r}", sorted(bundles))
        info = bundles[req.bundle]
        if not info.available:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                f"bundle {req.bundle} is unavailable on this server: {info.problem}")
        if req.class_label not in info.classes:
            invalid("class_label", f"unknown class {prefix(req.class_label)!r} for bundle {req.bundle}",
                    info.classes)
        if req.num_images > settings.max_images:
            invalid("num_images", f"num_images must be at most {settings.max_images} on this server")
        steps = req.steps if req.steps is not None else job_defaults(info)["steps"]
        if steps > settings.max_steps:
            invalid("steps", f"steps must be at most {settings.max_steps} on this server"
                    + ("" if req.steps is not None else f" (bundle {req.bundle} samples with {steps}: give steps)"))
        allowed = info.samplers or samplers
        if req.sampler is not None and req.sampler.lower() not in allowed:
            invalid("sampler", f"unknown sampler {prefix(req.sampler)!r} for bundle {req.bundle}", allowed)
        if formats.get(req.output_format):
            invalid("output_format", str(formats[req.output_format]))
        for name, formats_ in (("iod", ("dicom",)), ("bits", ("dicom",)), ("field_of_view_mm", ("dicom", "nifti"))):
            if getattr(req, name) is not None and req.output_format not in formats_:
                invalid(name, f"{name} applies to output_format {' or '.join(formats_)} only, not {req.output_format}")
        if req.iod is not None and req.iod not in info.dicom_iods():
            invalid("iod", colour_mismatch(req.bundle, info.channels, req.iod), info.dicom_iods())
        if req.bits is not None and info.channels == 3:
            invalid("bits", f"bits applies to grey images; bundle {req.bundle} makes RGB colour images, written as "
                    "8 bits a channel: leave bits out")
        if req.iod == "mr" and req.field_of_view_mm is None and not info.pixel_spacing_known():
            invalid("field_of_view_mm", f"iod mr needs a pixel spacing and the weights of bundle {req.bundle} record "
                    "none; give field_of_view_mm (e.g. 240 for a head)")
        if req.quality_check and (problem := info.quality_gate_problem()):
            invalid("quality_check", problem)

    def job_defaults(info: BundleInfo) -> dict[str, Any]:
        """What a job that leaves out sampler, steps or guidance_scale gets: the bundle's inference.yaml."""
        return {"steps": 50, "guidance_scale": 1.0, **info.defaults, "sampler": (info.samplers or samplers)[0]}

    def enqueue(request: dict[str, Any], key: KeyRecord, retry_of: str | None = None) -> JobCreated:
        with submit_lock:
            active = store.count_active(key.id)
            if active >= key.max_jobs:
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                    f"key {key.name!r} already has {active} active job(s), its limit; wait for one "
                                    "to finish or cancel one", headers={"Retry-After": "5"})
            job = Job(id=new_job_id(), key_id=key.id, request=request, retry_of=retry_of)
            try:
                estimate = worker.submit(job)
            except QueueFull as err:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(err), headers={"Retry-After": "10"}) \
                    from err
        return JobCreated(job_id=job.id, status="queued", estimated_time_seconds=estimate,
                          status_url=f"{API}/jobs/{job.id}")

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness (no key needed): ``ok``, or ``degraded`` with the bundles that cannot serve (reasons in
        ``/api/v1/models``)."""
        down = sorted(name for name, b in bundles.items() if not b.available)
        return {"status": "degraded" if down else "ok", "version": __version__, "unavailable_bundles": down}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse, responses=KEYED)
    def metrics(key: Key) -> PlainTextResponse:
        """Prometheus text: jobs by status, generation latency p50/p95/p99, images generated."""
        text = prom.render(store, worker.queue.qsize(), len(worker.pipelines))
        return PlainTextResponse(text, media_type=prom.CONTENT_TYPE)

    @app.get(f"{API}/models", tags=["models"], responses=KEYED)
    def list_models(key: Key) -> ModelList:
        """The bundles served, their classes, and the server's limits."""
        models = [ModelInfo(name=name, version=b.version, description=b.description, available=b.available,
                            unavailable_reason=b.problem, weights_sha256=b.weights_sha256, classes=b.classes,
                            image_size=b.image_size, channels=b.channels,
                            dicom_iods=b.dicom_iods() if formats.get("dicom") is None else [],
                            samplers=b.samplers or samplers, defaults=job_defaults(b),
                            output_formats=[f for f, why in formats.items() if why is None],
                            quality_check=b.available and b.quality_gate_problem() is None,
                            seconds_per_image_step=worker.cost(name).seconds_per_image_step if b.available else None)
                  for name, b in sorted(bundles.items())]
        return ModelList(models=models, limits={"max_images": settings.max_images, "max_steps": settings.max_steps,
                                                "max_active_jobs": key.max_jobs})

    @app.post(f"{API}/generate", tags=["jobs"], status_code=status.HTTP_202_ACCEPTED, responses=KEYED)
    def generate(req: GenerateRequest, key: Key) -> JobCreated:
        """Queue a job; poll ``status_url``. 422 names the allowed values; 429 over the key's active-job limit."""
        validate(req)
        request = req.model_dump()
        defaults = job_defaults(bundles[req.bundle])
        request["sampler"] = (req.sampler or defaults["sampler"]).lower()
        request["steps"] = req.steps if req.steps is not None else defaults["steps"]
        if req.guidance_scale is None:
            request["guidance_scale"] = defaults["guidance_scale"]
        return enqueue(request, key)

    @app.get(f"{API}/jobs/{{job_id}}", tags=["jobs"], responses=KEYED)
    def get_job(job_id: JobId, key: Key) -> JobInfo:
        """Status, progress (%), error and, when done, metrics and the result URL."""
        return job_info(owned_job(job_id, key))

    @app.delete(f"{API}/jobs/{{job_id}}", tags=["jobs"], status_code=status.HTTP_202_ACCEPTED, responses=KEYED)
    def cancel_job(job_id: JobId, key: Key) -> JobInfo:
        """Cancel a queued job at once or a running one at its next denoising step."""
        job = owned_job(job_id, key)
        if job.status not in ("queued", "running"):
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is already {job.status}")
        return job_info(worker.cancel(job_id) or job)

    @app.post(f"{API}/jobs/{{job_id}}/retry", tags=["jobs"], status_code=status.HTTP_202_ACCEPTED, responses=KEYED)
    def retry_job(job_id: JobId, key: Key) -> JobCreated:
        """Run a failed-and-retryable (or cancelled) job again as a new job with the same request."""
        job = owned_job(job_id, key)
        if not (job.status == "cancelled" or (job.status == "failed" and job.retryable)):
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {job.status} and not retryable")
        try:
            request = GenerateRequest(**job.request)
        except ValidationError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} cannot be retried: its request is no "
                                f"longer valid ({err.error_count()} error(s)); submit a new one") from err
        validate(request)
        return enqueue(job.request, key, retry_of=job.id)

    def finished_dir(job: Job) -> FsPath:
        if job.status != "succeeded":
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} is {job.status}, not succeeded")
        if not job.result:
            raise HTTPException(status.HTTP_410_GONE, f"the result of job {job.id} was deleted: results are kept "
                                f"{settings.retention_days:g} day(s) after a job finishes")
        return worker.job_dir(job.id)

    @app.get(f"{API}/jobs/{{job_id}}/result", tags=["jobs"], response_class=FileResponse, responses=KEYED)
    def job_result(job_id: JobId, key: Key) -> FileResponse:
        """A zip of the images (in the requested format) and ``samples.jsonl``."""
        job = owned_job(job_id, key)
        path = finished_dir(job) / RESULT_ZIP
        if not path.is_file():
            raise HTTPException(status.HTTP_410_GONE, f"the result of job {job_id} is no longer on the server")
        return FileResponse(path, media_type="application/zip",
                            filename=f"medgen_{job.request['bundle']}_{job_id[:8]}.zip")

    @app.get(f"{API}/jobs/{{job_id}}/images", tags=["jobs"], responses=KEYED)
    def job_images(job_id: JobId, key: Key) -> list[ImageInfo]:
        """The PNG previews of a finished job, in order."""
        records = read_samples(finished_dir(owned_job(job_id, key)) / "samples")
        return [ImageInfo(index=i, url=f"{API}/jobs/{job_id}/images/{i}", class_label=r["class"], seed=r["seed"])
                for i, r in enumerate(records)]

    @app.get(f"{API}/jobs/{{job_id}}/images/{{index}}", tags=["jobs"], response_class=FileResponse, responses=KEYED)
    def job_image(job_id: JobId, index: Annotated[int, Path(ge=0, le=100_000)], key: Key) -> FileResponse:
        """One PNG preview."""
        samples = (finished_dir(owned_job(job_id, key)) / "samples").resolve()
        records = read_samples(samples)
        if index >= len(records):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has {len(records)} image(s)")
        path = (samples / str(records[index]["file"])).resolve()
        if not path.is_relative_to(samples) or path.suffix != ".png" or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, "image not found")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui", include_in_schema=False, response_class=HTMLResponse)
    def ui() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        if swagger_files is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the API docs page needs the Swagger UI files "
                                "of fastapi-offline: pip install 'medgen[serve]' (the API itself is at /openapi.json)")
        return docs_page(app.openapi_url or "/openapi.json", f"{app.title} API")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> PlainTextResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return PlainTextResponse("internal error", status_code=500)

    return app
