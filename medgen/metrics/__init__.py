"""Evaluation of synthetic images: quality, diversity, privacy and utility (issue 3).

Modules: ``image_sets`` (load datalists / samples folders as N x 1 x H x W in [0, 1]), ``features`` (TF-FID
Inception, domain classifier; on-disk cache), ``distribution`` (FID, KID, PRDC), ``diversity`` (MS-SSIM),
``histograms``, ``similarity`` (MSE/SSIM table), ``memorisation`` (privacy audit), ``utility`` (downstream
classifier), ``baselines``, ``error_analysis``, ``quality_gate``, ``drift``, ``evaluate`` (everything into
metrics.json + report.html) and ``commands`` (CLI entry points returning exit codes).
"""

from medgen.metrics.distribution import fid, kid, prdc
from medgen.metrics.drift import mmd_test
from medgen.metrics.errors import ImageSetError, TooFewImagesError, WeightsUnavailableError
from medgen.metrics.quality_gate import QualityGate

__all__ = [
    "ImageSetError",
    "QualityGate",
    "TooFewImagesError",
    "WeightsUnavailableError",
    "fid",
    "kid",
    "mmd_test",
    "prdc",
]
