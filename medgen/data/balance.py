"""Class-balanced drawing of training items: every class drawn as often as any other, whatever its count.

For a rare condition the common class otherwise dominates the iterations: in the brain data set ``notumor`` is 28% of
the training slices. torch's ``WeightedRandomSampler`` (one process) and MONAI's ``DistributedWeightedRandomSampler``
(DDP) do the drawing; this module only gives each item the weight 1 / (its class's count).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from monai.data import DistributedWeightedRandomSampler
from torch.utils.data import Sampler, WeightedRandomSampler

logger = logging.getLogger(__name__)


def _weights_and_counts(items: Sequence[dict[str, Any]], label_key: str) -> tuple[list[float], Counter]:
    labels = []
    for item in items:
        try:
            labels.append(int(item[label_key]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{item.get('image', item)}: class-balanced sampling needs an integer {label_key!r} "
                             f"in every datalist item, this one has {item.get(label_key)!r}") from err
    counts = Counter(labels)
    return [1.0 / counts[label] for label in labels], counts


def class_weights(items: Sequence[dict[str, Any]], label_key: str = "label") -> list[float]:
    """Weight 1 / (the count of its class) for each item, so that every class has the same total weight."""
    return _weights_and_counts(items, label_key)[0]


def class_balanced_sampler(dataset: Any, distributed: bool = False, label_key: str = "label") -> Sampler:
    """A sampler drawing ``len(dataset)`` items per epoch with replacement, each class equally often on average.

    ``dataset.data`` holds the items that loaded (``SkipFailedCacheDataset`` drops the others), so the weights
    follow the data set the loader reads. ``distributed``: each rank draws its share (MONAI's sampler, which the
    trainer re-seeds every epoch as it does a ``DistributedSampler``).
    """
    weights, counts = _weights_and_counts(dataset.data, label_key)
    logger.info("class-balanced drawing: %s items of labels %s, each label 1/%d of the draws",
                len(weights), dict(sorted(counts.items())), len(counts))
    if distributed:
        return DistributedWeightedRandomSampler(dataset, weights, even_divisible=True)
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)
