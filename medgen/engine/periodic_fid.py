"""FID during training, from config values: the bundle's ``fid_interval`` switches it on (0 = off).

Builds :class:`medgen.engine.fid_handler.FIDHandler` lazily at ``attach`` (real images from the datalist's
validation split, a fixed set of labels and seeds, the chosen feature extractor), so a run with FID off pays
nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ignite.engine import Engine


class PeriodicFID:
    """Every ``interval`` epochs: sample ``per_class`` images per class from the EMA network (the same labels and
    seeds every time), FID against up to ``real_per_class`` real validation images per class, log it, append it to
    ``fid.jsonl`` in the run folder, redraw ``training_curves.png`` and keep ``best_model.pt`` (+ ``best_model.json``)
    at the best FID.

    Args:
        interval: epochs between evaluations; 0 turns the handler off.
        datalist: the training datalist (dict or JSON path); its ``validation`` split is the real set.
        pipeline_fn: builds a sampling pipeline over the current EMA network.
        model: the network whose weights are saved at the best FID.
        save_path: where the best weights go.
        features: ``inception`` (the published FID network, the quality protocol's features: the default) or
            ``domain`` (faster on a CPU, trained once on the datalist).
        meta: the run's weights metadata, written beside ``best_model.pt``.
        resize_mode, window, preset: the training keys of the same names, so the real images are prepared as the
            training images are.
    """

    def __init__(self, interval: int, datalist: dict | str, pipeline_fn: Callable[[], object], model,
                 save_path: str | Path, per_class: int = 32, image_size: int = 64, steps: int = 15,
                 features: str = "inception", domain_weights: str | None = None, datalist_path: str | None = None,
                 seed: int = 10_000, resize_mode: str = "crop", window=None, preset: str | None = None,
                 real_per_class: int = 200, sampler: str = "dpmpp2m", meta: object = None) -> None:
        self.interval = int(interval)
        self.datalist = datalist
        self.datalist_path = datalist_path
        self.pipeline_fn = pipeline_fn
        self.model = model
        self.save_path = Path(save_path)
        self.per_class = per_class
        self.image_size = image_size
        self.steps = steps
        self.features = features
        self.domain_weights = domain_weights
        self.seed = seed
        self.real_per_class = real_per_class
        self.sampler = sampler
        self.meta = meta
        self.preparation = {"resize_mode": resize_mode, "window": window, "preset": preset}
        self.handler = None

    def attach(self, engine: Engine) -> None:
        if self.interval <= 0:
            return
        from medgen.engine.fid_handler import FIDHandler
        from medgen.metrics.commands import build_extractors
        from medgen.metrics.image_sets import load_datalist_split

        real = load_datalist_split(self.datalist, "validation", size=self.image_size,
                                   per_class=self.real_per_class, **self.preparation)
        extractor = next(iter(build_extractors(self.features, self.datalist_path, self.domain_weights,
                                               size=self.image_size).values()))
        labels = [k for k in sorted({int(v) for v in real.labels}) for _ in range(self.per_class)]
        seeds = list(range(self.seed, self.seed + len(labels)))

        def sample_fn(lab, sd):
            return self.pipeline_fn().generate(lab, sd, self.steps, sampler=self.sampler)

        self.handler = FIDHandler(sample_fn, real.images, labels, seeds, extractor, model=self.model,
                                  save_path=self.save_path, interval=self.interval, size=self.image_size,
                                  meta=self.meta, history_path=self.save_path.parent / "fid.jsonl")
        self.handler.attach(engine)
