"""Speed and quality benchmarks (``python -m benchmarks.sampling``, ``python -m benchmarks.training``)."""
