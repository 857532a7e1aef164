"""In headless Chromium: the experiments page's test parameters (alpha, power, MDE) typed into the
filter bar change the figures, a bad one is a 400 page; the at-risk page draws its score lines."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import ARTIFACTS

LOAD_TIMEOUT_MS = 60_000


def _required(page: Any) -> list[str]:
    return [c.inner_text() for c in page.locator("#experiment-checkout td[data-required]").all()]


def test_typing_test_parameters_changes_the_figures(browser: Any, dashboard_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        resp = page.goto(dashboard_url + "/experiments?window=366", timeout=LOAD_TIMEOUT_MS)
        assert resp is not None and resp.status == 200
        before = _required(page)
        assert before and all(re.fullmatch(r"[\d,]+", n) for n in before), before
        alpha_before = page.locator("#experiment-checkout [data-alpha]").first.inner_text()

        page.fill("input[name=mde]", "0.05")
        with page.expect_navigation(timeout=LOAD_TIMEOUT_MS):
            page.press("input[name=mde]", "Enter")
        assert "mde=0.05" in page.url and "window=366" in page.url
        wider = _required(page)
        assert wider != before
        assert all(int(a.replace(",", "")) < int(b.replace(",", ""))
                   for a, b in zip(wider, before, strict=True))

        page.fill("input[name=alpha]", "0.01")
        with page.expect_navigation(timeout=LOAD_TIMEOUT_MS):
            page.press("input[name=alpha]", "Enter")
        assert "alpha=0.01" in page.url and "mde=0.05" in page.url
        assert page.locator("#experiment-checkout [data-alpha]").first.inner_text() != alpha_before
        assert _required(page) != wider
        page.screenshot(path=str(ARTIFACTS / "dashboard-experiments-params.png"), full_page=True)

        resp = page.goto(dashboard_url + "/experiments?power=1.5", timeout=LOAD_TIMEOUT_MS)
        assert resp is not None and resp.status == 400
        assert "power" in page.locator("#error-message").inner_text()
    finally:
        page.close()
    assert not [p for p in problems if "400" not in p], problems


def test_at_risk_page_draws_each_customers_scores(browser: Any, dashboard_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        resp = page.goto(dashboard_url + "/at-risk", timeout=LOAD_TIMEOUT_MS)
        assert resp is not None and resp.status == 200
        rows = page.locator("#at-risk tr").count() - 1
        assert rows > 0
        assert page.locator("#at-risk svg.spark").count() == rows
        page.screenshot(path=str(ARTIFACTS / "dashboard-at_risk-lines.png"), full_page=True)
    finally:
        page.close()
