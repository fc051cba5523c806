"""The web page at /ui, driven in headless Debian chromium over the Chrome DevTools Protocol."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_harness import ARTIFACTS, Server, free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STATIC = Path(__file__).resolve().parents[2] / "medgen" / "serve" / "static"


class Page:
    """Just enough CDP: evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        status = self.js("document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {expression!r}; page status: {status!r}")

    def set_value(self, element_id: str, value: Any, event: str = "change") -> None:
        self.js(
            f"(() => {{ const e = document.getElementById({element_id!r}); e.value = {json.dumps(str(value))};"
            f" e.dispatchEvent(new Event({event!r}, {{bubbles: true}})); }})()"
        )

    def click(self, element_id: str) -> None:
        self.js(f"document.getElementById({element_id!r}).click()")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[tuple[Page, Path]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                break
            except (httpx.TransportError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        page = Page(ws_url)
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        yield page, downloads
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
