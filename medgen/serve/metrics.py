"""``GET /metrics`` in the Prometheus text exposition format (0.0.4), computed from the job store on each scrape,
so the figures survive a restart: jobs by status, generation latency quantiles, images generated."""

from __future__ import annotations

from collections.abc import Sequence

from medgen.serve.jobs import JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
QUANTILES = (0.5, 0.95, 0.99)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (as numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _num(value: float) -> str:
    return "NaN" if value != value else repr(float(value))


def render(store: JobStore, queue_depth: int, models_loaded: int, window: int = 1000) -> str:
    """The metrics page. Latency is the generation time of the last ``window`` succeeded jobs."""
    counts = store.counts_by_status()
    latencies = [seconds for seconds, _, _ in store.run_times(limit=window)]
    lines = ["# HELP medgen_jobs Jobs in the store by status.", "# TYPE medgen_jobs gauge"]
    lines += [f'medgen_jobs{{status="{s}"}} {counts.get(s, 0)}' for s in STATES]
    lines += ["# HELP medgen_generation_latency_seconds Generation time of succeeded jobs "
              f"(last {window}).", "# TYPE medgen_generation_latency_seconds summary"]
    lines += [f'medgen_generation_latency_seconds{{quantile="{q}"}} {_num(quantile(latencies, q))}'
              for q in QUANTILES]
    lines += [f"medgen_generation_latency_seconds_sum {_num(sum(latencies))}",
              f"medgen_generation_latency_seconds_count {len(latencies)}"]
    lines += ["# HELP medgen_images_generated_total Images made by succeeded jobs.",
              "# TYPE medgen_images_generated_total counter",
              f"medgen_images_generated_total {store.images_generated()}",
              "# HELP medgen_queue_depth Jobs waiting for the worker.", "# TYPE medgen_queue_depth gauge",
              f"medgen_queue_depth {queue_depth}",
              "# HELP medgen_models_loaded Bundles whose pipeline is loaded.", "# TYPE medgen_models_loaded gauge",
              f"medgen_models_loaded {models_loaded}"]
    return "\n".join(lines) + "\n"
