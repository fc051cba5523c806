"""The shared latent cache of the latent tests: 3 real chest X-rays per class, a tiny untrained autoencoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from latent_helpers import cxr_datalist, make_cache, save_autoencoder, tiny_autoencoder


@pytest.fixture(scope="module")
def cxr(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A latent cache of 3 real chest X-rays per class at 32 px, with its autoencoder and weights file."""
    root = tmp_path_factory.mktemp("latent")
    autoencoder = tiny_autoencoder(0)
    weights = save_autoencoder(autoencoder, root / "model_autoencoder.pt")
    datalist = cxr_datalist(kermany)
    cache = make_cache(root / "latents_training.pt", autoencoder, weights, datalist)
    cache.load()
    return {"root": root, "autoencoder": autoencoder, "weights": weights, "datalist": datalist, "cache": cache}
