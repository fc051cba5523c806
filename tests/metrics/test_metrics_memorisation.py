import numpy as np
import pytest

from medgen.metrics.errors import TooFewImagesError
from medgen.metrics.memorisation import closest_pairs_png, memorisation_audit, redacted_ids


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


def _smooth_images(rng, n, size=32):
    """Random images with structure at several scales (pure pixel noise has nothing to align)."""
    import torch

    x = torch.from_numpy(rng.random((n, 1, 8, 8)).astype(np.float32))
    x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return (x + 0.1 * torch.rand_like(x)).clamp(0, 1).numpy()


def test_a_flipped_copy_is_flagged_and_its_transform_named(rng):
    train, heldout = _smooth_images(rng, 30), _smooth_images(rng, 20)
    generated = np.concatenate([_smooth_images(rng, 4), train[5:6, :, :, ::-1], train[9:10, :, ::-1, :] * 0.7 + 0.2])
    r = memorisation_audit(generated.copy(), train, heldout)
    assert r.flagged.tolist() == [False] * 4 + [True, True]
    assert r.nearest[4] == 5 and r.nearest[5] == 9
    assert r.transforms[4]["flip"] == "horizontal" and r.transforms[5]["flip"] == "vertical"
    s = r.summary([f"g{i}" for i in range(6)], redacted_ids([f"/p/t{i}.png" for i in range(30)], DATALIST))
    assert [f["train_file"] for f in s["flagged"]] == ["training[5]", "training[9]"]
    assert s["flagged"][0]["transform"]["flip"] == "horizontal" and s["phi_note"].startswith("PHI")


DATALIST = {"training": [{"image": f"/p/t{i}.png", "label": 0} for i in range(30)]}


def test_redacted_ids_name_items_by_datalist_place_with_relative_paths_and_in_file_addresses():
    data = {"training": [{"image": "a.png"}, {"image": "scans.npz", "npz_key": "train_images", "npz_index": 4}]}
    ids = ["/root/a.png", "/root/scans.npz:train_images:4", "/elsewhere/x.png"]
    assert redacted_ids(ids, data, "/root") == ["training[0]", "training[1]", "training-image-2"]
