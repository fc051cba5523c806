"""report.html shows colour images in colour (real PBC blood cells) and grey images in grey, as before."""

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medgen.metrics.evaluate import evaluate
from medgen.metrics.features import DomainFeatures
from medgen.metrics.image_sets import load_datalist_split, write_samples_dir

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(scope="module")
def blood_cells_datalist(tmp_path_factory) -> Path:
    """Real colour blood cells: 5 training and 2 test images per class (8 classes), paths into the shared data."""
    root = Path(os.environ.get("MEDGEN_TEST_DATA", REPO.parent / "shared" / "data")) / "blood_cells_pbc"
    if not root.is_dir():
        pytest.skip(f"real colour test data not found at {root} (set MEDGEN_TEST_DATA)")
    rng = np.random.default_rng(5)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    data: dict = {"classes": classes, "training": [], "test": []}
    for label, name in enumerate(classes):
        files = rng.choice(sorted(str(p) for p in (root / name).glob("*.jpg")), 7, replace=False).tolist()
        data["training"] += [{"image": f, "label": label} for f in files[:5]]
        data["test"] += [{"image": f, "label": label} for f in files[5:]]
    path = tmp_path_factory.mktemp("colour_report") / "datalist.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def embedded_images(html: str) -> dict[str, list[Image.Image]]:
    """The report's inline PNGs by their alt text, decoded."""
    out: dict[str, list[Image.Image]] = {}
    for data, alt in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">', html):
        out.setdefault(alt, []).append(Image.open(io.BytesIO(base64.b64decode(data))))
    return out


def colourful(im: Image.Image) -> bool:
    if im.mode != "RGB":
        return False
    x = np.asarray(im, dtype=np.float32)
    return float(np.abs(x[..., 0] - x[..., 2]).mean()) > 5.0


def run_report(tmp_path: Path, datalist: Path, grey: bool, name: str) -> tuple[dict, str]:
    test = load_datalist_split(datalist, "test", size=SIZE, channels=1 if grey else None)
    rng = np.random.default_rng(1)
    noisy = np.clip(test.images + rng.normal(0, 0.05, test.images.shape), 0, 1).astype(np.float32)
    samples = write_samples_dir(tmp_path / f"samples_{name}", noisy, test.labels, test.classes)
    channels = 1 if grey else 3
    m = evaluate(samples, datalist, tmp_path / name, {"domain": DomainFeatures(None, size=SIZE, channels=channels)},
                 size=SIZE, num_pairs=10, kid_subsets=5)
    return m, (tmp_path / name / "report.html").read_text()


@pytest.mark.slow
def test_report_embeds_colour_images_for_a_colour_set_and_grey_for_its_grey_version(
    tmp_path, blood_cells_datalist, isolated_cache
):
    m, html = run_report(tmp_path, blood_cells_datalist, grey=False, name="colour")
    assert m["channels"] == 3 and m["real_preparation"]["channels"] == 3
    images = embedded_images(html)
    for alt in ("real", "generated", "pairs", "most", "least"):
        assert images[alt] and all(colourful(im) for im in images[alt]), alt
    hist = m["generated"]["basophil"]["histogram"]
    assert set(hist["per_channel"]) == {"R", "G", "B"} and "basophil (R)" in html
    assert "(RGB)" in html

    mg, html_grey = run_report(tmp_path, blood_cells_datalist, grey=True, name="grey")
    assert mg["channels"] == 1
    grey_images = embedded_images(html_grey)
    for alt in ("real", "generated", "pairs", "most", "least"):
        assert grey_images[alt] and all(im.mode == "L" for im in grey_images[alt]), alt
    assert "per_channel" not in mg["generated"]["basophil"]["histogram"] and "basophil (R)" not in html_grey
    # the same cells, colour vs grey: the sample rows decode to different modes and channel counts
    a, b = images["generated"][0], grey_images["generated"][0]
    assert (a.mode, len(a.getbands())) == ("RGB", 3) and (b.mode, len(b.getbands())) == ("L", 1)
