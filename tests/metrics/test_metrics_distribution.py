import numpy as np
import pytest

from medgen.metrics.distribution import fid, kid, knn_distance, prdc
from medgen.metrics.errors import TooFewImagesError


def test_fid_of_a_set_with_itself_is_zero(rng):
    x = rng.normal(size=(200, 16))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_grows_with_a_mean_shift(rng):
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    small, large = fid(x, y + 0.5), fid(x, y + 2.0)
    assert 0 < small < large
    assert large == pytest.approx(8 * 4.0, rel=0.15)  # |mu diff|^2 = 8 * 2^2 for equal covariances


def test_kid_of_identical_sets_is_about_zero_with_a_std(rng):
    x = rng.normal(size=(120, 16))
    same = kid(x, x.copy(), subsets=20, subset_size=50)
    shifted = kid(x, x + 1.0, subsets=20, subset_size=50)
    assert same["std"] > 0 and same["subset_size"] == 50 and same["subsets"] == 20
    assert abs(same["mean"]) < 0.05 * shifted["mean"]  # unbiased: zero in expectation, subset noise only
    assert kid(x, x.copy(), subsets=5, subset_size=120)["mean"] == pytest.approx(0.0, abs=0.05 * shifted["mean"])


def test_prdc_of_identical_sets_is_one(rng):
    x = rng.normal(size=(100, 8))
    r = prdc(x, x.copy(), k=5)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0
    assert r["density"] == pytest.approx(1.0, abs=0.3)


def test_prdc_of_far_apart_sets_is_zero(rng):
    x = rng.normal(size=(60, 4))
    r = prdc(x, x + 100.0, k=3)
    assert r["precision"] == r["recall"] == r["density"] == r["coverage"] == 0.0


def test_prdc_detects_a_collapsed_generator(rng):
    real = rng.normal(size=(200, 4))
    collapsed = real[:5] + rng.normal(scale=0.01, size=(5, 4))  # realistic but covers few modes
    r = prdc(real, np.repeat(collapsed, 40, axis=0), k=5)
    assert r["precision"] > 0.9 and r["coverage"] < 0.35


@pytest.mark.parametrize(
    "call, metric, minimum",
    [
        (lambda x: fid(x[:1], x), "FID", 2),
        (lambda x: kid(x[:1], x), "KID", 2),
        (lambda x: prdc(x[:5], x, k=5), "precision/recall/density/coverage", 6),
    ],
)
def test_too_few_images_name_the_metric_and_minimum(rng, call, metric, minimum):
    with pytest.raises(TooFewImagesError, match=f"{metric} needs at least {minimum}"):
        call(rng.normal(size=(20, 4)))


def test_knn_distance_excludes_self():
    x = np.array([[0.0], [1.0], [3.0]])
    assert knn_distance(x, x, k=1, exclude_self=True).tolist() == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("n1, n2, d", [(300, 200, 16), (20, 30, 64)])
def test_exact_frechet_distance_equals_monai_fid(rng, n1, n2, d):
    from medgen.metrics.distribution import frechet_distance_exact

    a, b = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.3 + 0.2
    assert frechet_distance_exact(a, b) == pytest.approx(fid(a, b), rel=1e-6)
