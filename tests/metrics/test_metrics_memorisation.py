import numpy as np
import pytest

from medgen.metrics.errors import TooFewImagesError
from medgen.metrics.memorisation import closest_pairs_png, memorisation_audit


def _images(rng, n, size=16):
    return rng.random((n, 1, size, size)).astype(np.float32)


def test_an_exact_copy_of_a_training_image_is_flagged(rng):
    train, heldout = _images(rng, 30), _images(rng, 20)
    generated = np.concatenate([_images(rng, 5), train[7:8]])
    r = memorisation_audit(generated, train, heldout)
    assert r.flagged.tolist() == [False] * 5 + [True]
    assert r.nn_pixel[5] == 7 and r.dist_pixel[5] == pytest.approx(0.0, abs=1e-6)
    s = r.summary([f"g{i}" for i in range(6)], [f"t{i}" for i in range(30)])
    assert s["n_flagged"] == 1 and s["flagged"][0]["file"] == "g5" and s["flagged"][0]["train_file"] == "t7"


def test_a_near_copy_in_feature_space_is_flagged(rng):
    train, heldout = _images(rng, 30), _images(rng, 20)
    tf, hf = rng.normal(size=(30, 8)), rng.normal(size=(20, 8))
    generated, gf = _images(rng, 3), rng.normal(size=(3, 8))
    gf[1] = tf[4] * 2.0  # same direction: cosine distance 0
    r = memorisation_audit(generated, train, heldout, gf, tf, hf)
    assert r.flagged.tolist() == [False, True, False] and r.nn_feature[1] == 4


def test_fresh_images_are_not_flagged(rng):
    r = memorisation_audit(_images(rng, 10), _images(rng, 30), _images(rng, 20))
    assert not r.flagged.any()


def test_audit_needs_held_out_images(rng):
    with pytest.raises(TooFewImagesError, match="memorisation audit needs at least 10 held-out"):
        memorisation_audit(_images(rng, 2), _images(rng, 5), _images(rng, 3))


def test_closest_pairs_png_shows_generated_next_to_training(tmp_path, rng):
    train, heldout = _images(rng, 30), _images(rng, 20)
    generated = np.concatenate([_images(rng, 4), train[3:4]])
    r = memorisation_audit(generated, train, heldout)
    from PIL import Image

    png = np.asarray(Image.open(closest_pairs_png(generated, train, r, tmp_path / "pairs.png", n=2)))
    assert png.shape == (2 * 16 + 4, 2 * 16 + 4)
    assert np.array_equal(png[:16, :16], png[:16, 20:])  # closest pair is the copy: both halves identical
