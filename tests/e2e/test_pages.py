"""Server-rendered pages in a real headless Chromium, and content negotiation over HTTP."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import msgpack
import pytest
from playwright.sync_api import Browser

from dtecho.dtesn import datasets
from support import ServerProcess

pytestmark = pytest.mark.e2e


def test_dashboard_lists_models_and_requests(server: ServerProcess, browser: Browser) -> None:
    httpx.get(f"{server.base_url}/health/live")
    page = browser.new_page()
    page.goto(f"{server.base_url}/")
    assert page.title() == "Dashboard · dtecho"
    assert page.locator("h1").inner_text() == "Status: ok"
    models = page.locator("table#models").inner_text()
    assert "dtesn-echo" in models and "dtesn-embed" in models
    requests = page.locator("table#requests").inner_text()
    assert "/health/live" in requests
    page.close()


def test_dtesn_form_renders_the_real_result(
    server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(f"{server.base_url}/dtesn")
    page.fill("textarea[name=input]", "Membranes within membranes.")
    page.fill("input[name=membrane_depth]", "3")
    page.fill("input[name=esn_size]", "96")
    page.select_option("select[name=integrator]", "rk4")
    page.click("button[type=submit]")
    page.wait_for_selector("#result")
    # Four membranes at depth 3: one circle each in the tree, one row each in the table.
    assert page.locator("#membrane-tree circle.membrane").count() == 4
    assert page.locator("#membrane-tree line").count() == 3
    assert page.locator("#membranes tr").count() == 1 + 4
    assert "verified order 4" in page.locator("#result").inner_text()
    page.screenshot(path=str(tmp_path / "dtesn.png"), full_page=True)
    assert (tmp_path / "dtesn.png").stat().st_size > 1000
    api = httpx.post(
        f"{server.base_url}/v1/dtesn/process",
        json={"input": "Membranes within membranes.", "membrane_depth": 3, "esn_size": 96,
              "integrator": "rk4"},
    ).json()  # fmt: skip
    first_row = page.locator("#membranes tr").nth(1).inner_text()
    assert f"{api['membranes'][0]['mean_abs_activation']:.4f}" in first_row
    page.close()


def test_user_text_is_escaped(server: ServerProcess, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(f"{server.base_url}/dtesn")
    attack = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
    page.fill("textarea[name=input]", attack)
    page.fill("input[name=esn_size]", "64")
    page.fill("input[name=membrane_depth]", "2")
    page.click("button[type=submit]")
    page.wait_for_selector("#result")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#result script").count() == 0
    assert page.locator("#result img").count() == 0
    assert page.locator("#echo").inner_text() == attack
    page.close()


def test_form_errors_are_shown_in_the_page(server: ServerProcess, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(f"{server.base_url}/dtesn")
    page.fill("textarea[name=input]", "x")
    page.fill("input[name=membrane_depth]", "8")
    page.fill("input[name=esn_size]", "64")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "esn_size 64 is too small" in page.locator("#error").inner_text()
    page.close()


def test_model_page_plots_the_fit(server: ServerProcess, browser: Browser) -> None:
    series = datasets.mackey_glass(700)
    model = httpx.post(
        f"{server.base_url}/v1/dtesn/models",
        json={"name": "<b>mg</b>", "inputs": series[:-1].tolist(), "targets": series[1:].tolist(),
              "config": {"units": 50}},
        timeout=60,
    ).json()  # fmt: skip
    page = browser.new_page()
    page.goto(f"{server.base_url}/dtesn/models/{model['id']}")
    assert page.locator("h1").inner_text() == "<b>mg</b>"
    assert page.locator("#forecast-plot polyline").count() == 2
    assert "fit" in page.locator("main").inner_text()
    page.close()


# ---- content negotiation --------------------------------------------------------------------


def get(server: ServerProcess, path: str, accept: str | None) -> httpx.Response:
    headers = {"accept": accept} if accept is not None else {}
    return httpx.get(f"{server.base_url}{path}", headers=headers)


def test_status_resource_in_four_representations(server: ServerProcess) -> None:
    as_json = get(server, "/status", None)
    assert as_json.headers["content-type"] == "application/json"
    # Accept-Encoding too when the answer was compressed (httpx accepts gzip).
    assert "Accept" in as_json.headers.get_list("vary", split_commas=True)
    html = get(server, "/status", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
    assert html.headers["content-type"].startswith("text/html") and "<h1>" in html.text
    xml = get(server, "/status", "application/xml")
    root = ET.fromstring(xml.content)
    assert root.tag == "status" and root.findtext("status") == "ok"
    packed = get(server, "/status", "application/msgpack")
    assert msgpack.unpackb(packed.content)["models"] == as_json.json()["models"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json;q=0.5, application/xml", "application/xml"),
        ("text/*;q=0.9, application/*;q=0.1", "text/html"),
        ("application/json;q=0, */*;q=0.1", "text/html"),
        ("*/*", "application/json"),
    ],
)
def test_q_values_decide(server: ServerProcess, accept: str, expected: str) -> None:
    assert get(server, "/status", accept).headers["content-type"].startswith(expected)


def test_nothing_acceptable_is_406(server: ServerProcess) -> None:
    for accept in ("image/png", "application/json;q=0, text/html;q=0, application/xml;q=0, "
                   "application/msgpack;q=0"):  # fmt: skip
        response = get(server, "/status", accept)
        assert response.status_code == 406
        assert response.json()["error"]["code"] == "not_acceptable"


def test_model_lists_and_process_negotiate(server: ServerProcess) -> None:
    models = get(server, "/v1/models", "application/xml")
    ids = [item.findtext("id") for item in ET.fromstring(models.content).find("data")]
    assert ids == ["dtesn-echo", "dtesn-embed"]
    assert get(server, "/v1/dtesn/models", "application/msgpack").status_code == 200
    body = {"input": "abc", "esn_size": 64, "membrane_depth": 2}
    html = httpx.post(
        f"{server.base_url}/v1/dtesn/process", json=body, headers={"accept": "text/html"}
    )
    assert html.headers["content-type"].startswith("text/html")
    assert 'id="membrane-tree"' in html.text
    packed = httpx.post(
        f"{server.base_url}/v1/dtesn/process", json=body, headers={"accept": "application/msgpack"}
    )
    assert msgpack.unpackb(packed.content)["steps"] == 3
