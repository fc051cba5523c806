"""A MONAI ``CacheDataset`` that drops items which fail to load instead of stopping the run.

MONAI's ``CacheDataset`` fills its cache in a thread pool; an exception in one item ends the whole run, and it
leaves the pool's other threads running inside torch/PIL while the interpreter shuts down, which aborts the
process (``terminate called without an active exception``, SIGABRT). Here every item's loading is wrapped, so
no exception ever leaves a pool thread: a failing item is dropped with a one-line warning naming the file and
the reason, the drops are counted by reason, and the run goes on with the rest. This is the only gap filled;
caching, threads and the transform split are MONAI's.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import CacheDataset

logger = logging.getLogger(__name__)


class _Failed:
    """Placeholder for an item whose deterministic transforms raised."""

    __slots__ = ("reason", "message")

    def __init__(self, reason: str, message: str) -> None:
        self.reason, self.message = reason, message


class LoadError(RuntimeError):
    """No item of a data set could be loaded; the message gives the count by reason and the first failures."""


def describe_failure(err: BaseException, item: Any) -> tuple[str, str]:
    """(reason, one-line message naming the file) for an exception raised while loading ``item``.

    MONAI wraps a transform's error in ``RuntimeError("applying transform ...")``; the innermost cause is the
    one that says what is wrong with the file.
    """
    chain = [err, *_chain(err)]
    cause = next((e for e in chain if hasattr(e, "reason")), chain[-1])
    reason = str(getattr(cause, "reason", type(cause).__name__))
    text = " ".join(str(cause).split()) or type(cause).__name__
    path = str(item.get("image", "")) if isinstance(item, dict) else str(item)
    if path and path not in text:
        text = f"{path}: {text}"
    return reason, text


def _chain(err: BaseException) -> list[BaseException]:
    out, cause = [], err.__cause__
    while cause is not None:
        out.append(cause)
        cause = cause.__cause__
    return out


class SkipFailedCacheDataset(CacheDataset):
    """``monai.data.CacheDataset`` whose items that fail to load are dropped, logged and counted, never fatal.

    Cached items (the first ``cache_rate`` share) are checked while the cache fills, and failing ones leave
    the data set (``len`` counts only the rest). An item outside the cache that fails when it is read is
    replaced by the next item that loads, with the same warning. ``failures`` holds ``(path, message)`` and
    ``skipped`` the count by reason. When nothing loads, :class:`LoadError` names the reasons.

    Args:
        data, transform, cache_num, cache_rate, num_workers, progress, ...: as ``monai.data.CacheDataset``
            (``hash_as_key`` and ``runtime_cache`` are not supported).
        max_logged: one-line warnings written (one per failed file) before failures are only counted.
    """

    def __init__(self, data: Sequence, transform: Sequence[Callable] | Callable | None = None,
                 max_logged: int = 1000, **kwargs: Any) -> None:
        if kwargs.get("hash_as_key") or kwargs.get("runtime_cache"):
            raise ValueError("SkipFailedCacheDataset does not support hash_as_key or runtime_cache")
        self.max_logged = max_logged
        self.skipped: Counter = Counter()
        self.failures: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        self._lock = threading.Lock()  # the cache fills in threads
        super().__init__(data=data, transform=transform, **kwargs)

    def _record(self, item: Any, err: BaseException) -> _Failed:
        reason, message = describe_failure(err, item)
        path = str(item.get("image", "")) if isinstance(item, dict) else str(item)
        with self._lock:
            self.skipped[reason] += 1
            self.failures.append((path, message))
            if len(self.failures) <= self.max_logged:
                logger.warning("skipped %s", message)
        return _Failed(reason, message)

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # any failure of one item must not leave the thread pool (see module doc)
            return self._record(self.data[idx], err)

    def set_data(self, data: Sequence) -> None:
        """Fill the cache as MONAI does, then drop the items that failed and report them."""
        self.skipped, self.failures, self._bad = Counter(), [], set()
        super().set_data(data)
        failed = [i for i, entry in enumerate(self._cache) if isinstance(entry, _Failed)]
        if failed:
            drop = set(failed)
            self.data = [d for i, d in enumerate(self.data) if i not in drop]
            self._cache = [c for i, c in enumerate(self._cache) if i not in drop]
            self.cache_num = len(self._cache)
            self._report(len(data))

    def _report(self, total: int) -> None:
        counts = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        if not len(self.data):
            first = "; ".join(message for _, message in self.failures[:3])
            raise LoadError(f"none of the {total} items could be loaded ({counts}); first: {first}")
        logger.warning("dropped %d of %d items that failed to load (%s); training goes on with %d",
                       len(self.failures), total, counts, len(self.data))

    def _transform(self, index: int):
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self._bad:
                continue
            try:
                return super()._transform(i)
            except Exception as err:  # an uncached item that fails: log it once and use the next one that loads
                self._bad.add(i)
                self._record(self.data[i], err)
        raise LoadError(f"none of the {len(self)} items could be loaded ({dict(self.skipped)})")
