import numpy as np
import pytest

from medgen.metrics.error_analysis import mode_collapse, radial_power_spectrum, realism_ranking, spectrum_comparison
from medgen.metrics.utility import auc, auc_with_ci, mcnemar


def test_spectrum_of_identical_sets_matches_and_noise_adds_high_frequencies(rng):
    smooth = np.cumsum(np.cumsum(rng.random((6, 1, 32, 32)), axis=2), axis=3)
    smooth = (smooth / smooth.max()).astype(np.float32)
    assert spectrum_comparison(smooth, smooth.copy())["log_spectral_distance"] == pytest.approx(0.0, abs=1e-9)
    noisy = np.clip(smooth + rng.normal(0, 0.1, smooth.shape), 0, 1).astype(np.float32)
    assert spectrum_comparison(smooth, noisy)["high_freq_log_ratio"] > 0.2
    freq, power = radial_power_spectrum(smooth)
    assert len(freq) == len(power) == 16 and freq[-1] < 0.5


def test_mode_collapse_is_seen_as_empty_clusters(rng):
    centres = rng.normal(scale=10, size=(5, 6))
    real = np.concatenate([c + rng.normal(size=(40, 6)) for c in centres])
    healthy = mode_collapse(real + rng.normal(scale=0.1, size=real.shape), real, clusters=5)
    collapsed = mode_collapse(centres[0] + rng.normal(size=(100, 6)), real, clusters=5)
    assert healthy["empty_clusters"] == 0 and healthy["generated_entropy"] > 0.9
    assert collapsed["empty_clusters"] >= 3 and collapsed["generated_entropy"] < healthy["generated_entropy"] - 0.4


def test_realism_ranking_orders_by_distance(rng):
    real = rng.normal(size=(100, 3))
    fake = np.array([[0.0, 0, 0], [50.0, 0, 0], [5.0, 0, 0]])
    r = realism_ranking(fake, real, k=3, n=3)
    assert r["most"] == [0, 2, 1] and r["least"][0] == 1


def test_auc_known_values():
    y = np.array([0, 0, 1, 1], bool)
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auc(np.array([0.1, 0.9, 0.2, 0.8]), y) == 0.5


def test_auc_ci_contains_the_estimate(rng):
    y = rng.random(200) < 0.5
    s = y + rng.normal(scale=0.8, size=200)
    r = auc_with_ci(s, y, boots=200)
    assert r["ci_low"] < r["auc"] < r["ci_high"] and 0.7 < r["auc"] < 0.95


def test_mcnemar():
    a = np.array([True] * 50 + [False] * 50)
    assert mcnemar(a, a)["p_value"] == 1.0
    b = np.ones(100, bool)  # B right on all 50 that A got wrong
    r = mcnemar(a, b)
    assert r["only_real_plus_synthetic_correct"] == 50 and r["only_real_correct"] == 0 and r["p_value"] < 1e-10
