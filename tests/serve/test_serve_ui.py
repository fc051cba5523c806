"""The web page at /ui, driven in headless Debian chromium over the Chrome DevTools Protocol."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest
from serve_harness import ARTIFACTS, Page, Server

pytestmark = pytest.mark.slow

STATIC = Path(__file__).resolve().parents[2] / "medgen" / "serve" / "static"


def test_page_uses_no_external_resources() -> None:
    html = (STATIC / "index.html").read_text()
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html)) == {"/ui/static/style.css", "/ui/static/app.js"}
    for name in ("app.js", "style.css"):
        assert "://" not in (STATIC / name).read_text()


def test_generate_two_images_in_the_browser(server: Server, keys: dict[str, str], browser: tuple[Page, Path]) -> None:
    page, downloads = browser
    page.call("Page.navigate", url=f"{server.url}/ui")
    page.wait("document.readyState === 'complete' && !!document.getElementById('generate')")
    page.set_value("api-key", keys["alice"], "input")
    page.click("save-key")
    page.wait("document.getElementById('class_label').options.length === 2")
    assert page.js("sessionStorage.getItem('medgenApiKey')") == keys["alice"]
    assert page.js("document.getElementById('api-key').value") == ""  # not left in the field

    # the form starts from the bundle's own sampling settings (cxr_ddpm's inference.yaml)
    assert page.js("['sampler', 'steps', 'guidance_scale'].map(i => document.getElementById(i).value)") == \
        ["dpmpp2m", "20", "1.5"]
    kind = "document.getElementById('model-kind').textContent"
    assert "guided" not in page.js(kind)  # cxr guides every step; cxr_gated only the steps at noise levels <= 11
    page.set_value("bundle", "cxr_gated")
    page.wait(f"{kind}.endsWith('; guided at noise levels 0–11')")
    page.set_value("bundle", "cxr")
    page.wait(f"!{kind}.includes('guided')")
    page.set_value("class_label", "NORMAL")
    page.set_value("num_images", 2, "input")
    page.set_value("seed", 11)
    page.set_value("steps", 4)
    assert page.js("document.getElementById('num_images_out').textContent") == "2"
    page.click("generate")
    page.wait("document.body.dataset.gallery === '2'")
    page.wait("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 16)")
    captions = page.js("[...document.querySelectorAll('#gallery figcaption')].map(c => c.textContent)")
    assert captions == ["NORMAL · seed 11", "NORMAL · seed 12"]
    assert page.js("document.getElementById('progress').value") == 100
    shot = page.screenshot(ARTIFACTS / "serve_ui.png")
    assert shot.stat().st_size > 5000

    page.click("download")
    deadline = time.monotonic() + 180
    while not list(downloads.glob("*.zip")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (zipped,) = list(downloads.glob("*.zip"))
    assert "samples.jsonl" in zipfile.ZipFile(zipped).namelist()

    page.set_value("steps", 1000)
    page.click("generate")
    page.wait("document.body.dataset.jobStatus === 'running'")
    page.click("cancel")
    page.wait("document.body.dataset.jobStatus === 'cancelled'", timeout=300)
    assert page.js("document.getElementById('status').textContent") == "cancelled"
    assert page.js("document.getElementById('gallery').children.length") == 0


def test_a_rejected_key_is_reported_on_the_page(server: Server, browser: tuple[Page, Path]) -> None:
    page, _ = browser
    page.call("Page.navigate", url=f"{server.url}/ui")
    page.wait("document.readyState === 'complete' && !!document.getElementById('save-key')")
    page.set_value("api-key", "mg_wrong", "input")
    page.click("save-key")
    assert page.wait("document.getElementById('key-status').textContent === 'key rejected'")
