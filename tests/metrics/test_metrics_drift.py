import pytest

from medgen.metrics.drift import mmd_test
from medgen.metrics.errors import TooFewImagesError


def test_same_distribution_gives_a_high_p_value(rng):
    r = mmd_test(rng.normal(size=(80, 8)), rng.normal(size=(80, 8)), permutations=200)
    assert r["p_value"] > 0.05


def test_shifted_distribution_gives_a_low_p_value(rng):
    r = mmd_test(rng.normal(size=(80, 8)), rng.normal(size=(80, 8)) + 0.7, permutations=200)
    assert r["p_value"] < 0.01 and r["mmd2"] > 0


def test_drift_needs_enough_vectors(rng):
    with pytest.raises(TooFewImagesError, match="MMD drift test needs at least 5"):
        mmd_test(rng.normal(size=(3, 2)), rng.normal(size=(30, 2)))
