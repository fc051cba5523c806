"""The API docs at /docs: Swagger UI from this server's own copy of its files (no CDN), the API-key security
schemes in the OpenAPI, and "Authorize" + "Try it out" calling the API from an offline headless chromium."""

from __future__ import annotations

import re

import pytest
from serve_harness import ARTIFACTS, Page, Server

pytestmark = pytest.mark.slow

LIST_MODELS = "#operations-models-list_models_api_v1_models_get"


def test_docs_page_loads_only_this_servers_files(server: Server) -> None:
    with server.client() as anon:
        page = anon.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sorted(urls) == ["/docs/static/favicon.png", "/docs/static/swagger-ui-bundle.js",
                                "/docs/static/swagger-ui.css"]
        assert "://" not in page.headers["content-security-policy"]
        types = {u: anon.get(u) for u in urls}
        assert all(r.status_code == 200 and len(r.content) > 1000 for r in types.values())
        assert types["/docs/static/swagger-ui-bundle.js"].headers["content-type"].startswith("text/javascript")
        assert types["/docs/static/swagger-ui.css"].headers["content-type"].startswith("text/css")
        spec = anon.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["APIKey"]["description"]}
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for method, op in item.items():
            keyed = path != "/healthz"
            assert op.get("security") == ([{"APIKey": []}, {"Bearer": []}] if keyed else None), (method, path)
            assert ("401" in op["responses"]) == keyed, (method, path)


def execute_list_models(page: Page, clear: bool = True) -> tuple[str, str, str]:
    """"Execute" on GET /api/v1/models (in "Try it out" mode); the status, body and curl command the page shows."""
    page.js(f"document.querySelector('{LIST_MODELS} .execute').click()")
    status = f"document.querySelector('{LIST_MODELS} .live-responses-table .response .response-col_status')"
    page.wait(f"!!{status} && !!{status}.textContent.trim()")
    code = page.js(f"{status}.textContent.trim()")
    body = page.js(f"document.querySelector('{LIST_MODELS} .live-responses-table .response-col_description "
                   "pre').textContent")
    curl = page.js(f"document.querySelector('{LIST_MODELS} .curl-command')?.textContent ?? ''")
    if clear:
        page.js(f"document.querySelector('{LIST_MODELS} .btn-clear').click()")
        page.wait(f"!document.querySelector('{LIST_MODELS} .live-responses-table')")
    return code, body, curl


def test_docs_render_offline_authorise_and_call(server: Server, keys: dict[str, str], browser) -> None:
    page, _ = browser
    page.call("Page.navigate", url=f"{server.url}/docs")
    page.wait("document.querySelectorAll('.opblock').length >= 8")
    paths = page.js("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path)")
    assert {"/api/v1/models", "/api/v1/generate", "/api/v1/jobs/{job_id}", "/healthz"} <= set(paths)
    # everything the page fetched came from this server (chromium here resolves no other host)
    loaded = page.js("performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(server.url + "/") for url in loaded), loaded
    assert page.js("typeof SwaggerUIBundle") == "function"

    page.js(f"document.querySelector('{LIST_MODELS} .opblock-summary-control').click()")
    page.wait(f"!!document.querySelector('{LIST_MODELS} .try-out__btn')")
    page.js(f"document.querySelector('{LIST_MODELS} .try-out__btn').click()")
    page.wait(f"!!document.querySelector('{LIST_MODELS} .execute')")
    code, body, curl = execute_list_models(page)
    assert code == "401" and "missing API key" in body and "X-API-Key" not in curl  # not authorised yet

    page.js("document.querySelector('.auth-wrapper .authorize').click()")
    field = "document.querySelector('.modal-ux input[type=text]')"
    page.wait(f"!!{field}")
    headings = page.js("[...document.querySelectorAll('.modal-ux h4')].map(h => h.textContent)")
    assert [" ".join(h.split()) for h in headings] == ["APIKey (apiKey)", "Bearer (http, Bearer)"]
    page.js(f"{field}.focus()")
    page.call("Input.insertText", text=keys["alice"])
    page.js("document.querySelector('.modal-ux .auth-btn-wrapper .authorize').click()")
    page.wait("[...document.querySelectorAll('.modal-ux button')].some(b => b.textContent.trim() === 'Logout')")
    page.js("document.querySelector('.modal-ux .btn-done').click()")
    page.wait("!document.querySelector('.modal-ux')")

    code, body, curl = execute_list_models(page, clear=False)
    assert code == "200", body
    assert '"name": "cxr"' in body and '"NORMAL"' in body
    assert f"X-API-Key: {keys['alice']}" in curl
    shot = page.screenshot(ARTIFACTS / "serve_docs.png")
    assert shot.stat().st_size > 20_000
