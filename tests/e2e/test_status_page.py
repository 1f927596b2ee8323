"""The live status page: the last hour from the in-process history, in a real Chromium."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

from support import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

INTERVAL = 0.5
T = TypeVar("T")


CHARTS = ("requests", "latency", "cache", "tokens")


def settled(page: Page, read: Callable[[], T]) -> T:
    """``read()`` of the page, again if a self-refresh replaced the document meanwhile."""
    for _ in range(20):
        try:
            return read()
        except PlaywrightError:
            page.wait_for_load_state()
    return read()


def _traffic(server: ServerProcess, stop: threading.Event, sent: list[int]) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        while not stop.is_set():
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "dtesn-echo", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "status"}]},
            )  # fmt: skip
            embed = client.post("/v1/embeddings", json={"model": "dtesn-embed", "input": "same"})
            bad = client.post("/v1/chat/completions", json={"model": "dtesn-echo"})
            assert (chat.status_code, embed.status_code, bad.status_code) == (200, 200, 400)
            sent[0] += 3


def test_status_page_shows_the_live_hour_and_refreshes_itself(
    server_factory: Any, browser: Browser, tmp_path: Path
) -> None:
    server = server_factory({"status_page": {"history_interval_seconds": INTERVAL}})
    stop, sent = threading.Event(), [0]
    worker = threading.Thread(target=_traffic, args=(server, stop, sent), daemon=True)
    worker.start()
    try:
        page = browser.new_page()
        # The page reloads itself (meta refresh, no JavaScript): at least once a second.
        page.goto(f"{server.base_url}/")
        assert settled(page, lambda: page.locator('meta[http-equiv="refresh"]').get_attribute(
            "content"
        )) == "1"  # fmt: skip
        for _ in range(2):  # it reloads itself
            page.wait_for_event("load", timeout=10_000)

        def busy() -> bool:
            cells = page.locator("#live-summary tr").nth(1).locator("td")
            return float(settled(page, lambda: cells.nth(0).inner_text())) > 0

        wait_until(busy, timeout=20, interval=0.2)

        def charts() -> list[int]:
            return [page.locator(f"#chart-{name} polyline").count() for name in CHARTS]

        # Every chart has a line: requests, latency, the repeated embedding's cache hits and
        # the chat's tokens.
        assert all(settled(page, charts))
        shot = tmp_path / "status.png"
        settled(page, lambda: page.screenshot(path=str(shot), full_page=True))
        assert shot.stat().st_size > 10_000
        slo_table = settled(page, lambda: page.locator("#slo").inner_text())
        assert "chat-completions-availability" in slo_table
        page.close()
    finally:
        stop.set()
        worker.join(timeout=30)
    # Rates times interval lengths add up to the requests counted, exactly: the history reads
    # the same counters as /metrics. Once two more samples are in, all traffic is inside.
    time.sleep(3 * INTERVAL)
    live = httpx.get(f"{server.base_url}/status", headers={"accept": "application/json"}).json()
    series = live["live"]["series"]
    ends = series["at"]
    assert len(ends) >= 2
    starts = [series["since"], *ends[:-1]]
    counted = sum(r * (e - s) for r, s, e in zip(series["request_rate"], starts, ends, strict=True))
    assert counted == pytest.approx(sent[0], rel=0.02)
    assert live["live"]["latest"]["request_rate"] == 0.0
    hits = [h for h in series["cache_hit_ratio"] if h is not None]
    assert hits and max(hits) > 0
    # The default objectives. No answer was a 5xx (the 400s are the client's fault), so the
    # availability SLIs are exactly 1 and no error budget is spent.
    slo = {s["name"]: s for s in live["live"]["slo"]}
    chat = slo["chat-completions-availability"]
    assert chat["events"] == pytest.approx(2 * sent[0] / 3)  # the chat and the invalid chat
    assert chat["sli"] == 1.0 and chat["error_budget_left"] == 1.0
    assert slo["api-availability"]["events"] == pytest.approx(sent[0])
