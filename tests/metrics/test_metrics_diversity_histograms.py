import numpy as np
import pytest

from medgen.metrics.diversity import ms_ssim_config, ms_ssim_diversity
from medgen.metrics.errors import ImageSetError, TooFewImagesError
from medgen.metrics.histograms import histogram_tests
from medgen.metrics.similarity import real_vs_synthetic_table


def test_ms_ssim_config_at_64_uses_three_scales_and_kernel_7():
    cfg = ms_ssim_config(64)
    assert cfg["kernel_size"] == 7 and len(cfg["weights"]) == 3 and sum(cfg["weights"]) == pytest.approx(1.0)
    assert ms_ssim_config(224)["kernel_size"] == 11 and len(ms_ssim_config(224)["weights"]) == 5
    with pytest.raises(ImageSetError, match="at least 28"):
        ms_ssim_config(16)


def test_copies_of_one_image_have_ms_ssim_one_and_noise_is_diverse(rng):
    img = rng.random((1, 1, 64, 64)).astype(np.float32)
    assert ms_ssim_diversity(np.repeat(img, 5, 0), num_pairs=10)["mean"] == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_diversity(rng.random((10, 1, 64, 64)).astype(np.float32), num_pairs=10)["mean"] < 0.2


def test_ms_ssim_needs_two_images(rng):
    with pytest.raises(TooFewImagesError, match="MS-SSIM diversity needs at least 2"):
        ms_ssim_diversity(rng.random((1, 1, 64, 64)).astype(np.float32))


def test_identical_histograms_have_zero_chi2_and_kl(rng):
    x = rng.random((4, 1, 16, 16)).astype(np.float32)
    r = histogram_tests(x, x.copy())
    assert r["chi2"] == pytest.approx(0.0, abs=1e-9) and r["kl_real_fake"] == pytest.approx(0.0, abs=1e-9)
    assert r["p_value"] == pytest.approx(1.0)


def test_darker_images_fail_the_histogram_test(rng):
    x = rng.random((4, 1, 16, 16)).astype(np.float32)
    r = histogram_tests(x, x * 0.5)
    assert r["p_value"] < 1e-6 and r["kl_real_fake"] > 0.1


def test_mse_ssim_table_rows(rng):
    real = rng.random((8, 1, 32, 32)).astype(np.float32)
    rows = real_vs_synthetic_table(
        real, np.array([0, 1] * 4), real.copy(), np.array([0, 1] * 4), ["neg", "pos"], num_pairs=20
    )
    names = [(r["a"], r["b"]) for r in rows]
    assert ("real positives", "synthetic positives") in names and ("real negatives", "real positives") in names
    assert all(0 <= r["mse"] and -1 <= r["ssim"] <= 1 for r in rows)


def test_mse_is_also_given_on_the_8_bit_scale(rng):
    """The pneumonia synthesiser design reports MSE of 8-bit images: 0.1 in [0, 1] is 25.5 grey levels, 650.25."""
    a, b = np.zeros((4, 1, 8, 8), np.float32), np.full((4, 1, 8, 8), 0.1, np.float32)
    row = real_vs_synthetic_table(a, np.array([0, 1, 0, 1]), b, np.array([0, 1, 0, 1]), ["neg", "pos"], num_pairs=8)[0]
    assert row["mse"] == pytest.approx(0.01) and row["mse_255"] == pytest.approx(650.25, rel=1e-5)
