"""Errors raised by the evaluation code, worded so that the message names the metric, the file and the fix."""

from __future__ import annotations


class TooFewImagesError(ValueError):
    """A metric was given fewer images (or features) than it needs."""

    def __init__(self, metric: str, minimum: int, got: int, what: str = "images"):
        self.metric, self.minimum, self.got = metric, minimum, got
        super().__init__(f"{metric} needs at least {minimum} {what}, got {got}.")


class ImageSetError(ValueError):
    """An image set cannot be read or brought to the common form (N x 1 x H x W, float32 in [0, 1])."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights for a feature extractor could not be found or fetched."""


def require(metric: str, minimum: int, got: int, what: str = "images") -> None:
    """Raise :class:`TooFewImagesError` when ``got < minimum``."""
    if got < minimum:
        raise TooFewImagesError(metric, minimum, got, what)
