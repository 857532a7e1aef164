"""Every dashboard view in headless Chromium, served by `journeymap dashboard` (a subprocess) on
demo data: it loads, logs no console error, and picking a filter in the form changes the numbers.
Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.web.dashboard import VIEWS
from tests.browser.conftest import ARTIFACTS, ROOT
from tests.browser.pages import body_numbers

LOAD_TIMEOUT_MS = 60_000


def _numbers(page: Any) -> list[str]:
    return body_numbers(page.content())


@pytest.mark.parametrize("view", VIEWS, ids=[v.slug for v in VIEWS])
def test_view_loads_and_filters_change_it(browser: Any, dashboard_url: str, view: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 else None)
    try:
        resp = page.goto(dashboard_url + view.path, timeout=LOAD_TIMEOUT_MS)
        assert resp is not None and resp.status == 200
        assert page.locator("h1").first.inner_text().startswith(view.title)
        assert page.locator(".note").first.is_visible()
        assert page.locator(".kpi .trend").count() >= 4
        plain = _numbers(page)
        assert plain
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{view.slug}.png"), full_page=True)

        # Changing a filter submits the form at once (the page's only script).
        with page.expect_navigation(timeout=LOAD_TIMEOUT_MS):
            page.select_option("select[name=window]", "7")
        assert "window=7" in page.url
        weekly = _numbers(page)
        assert weekly != plain, f"{view.path}: window=7 did not change the numbers"

        if view.slug != "alerts":  # the demo's one alert is in one segment: see the HTTP test
            # A segment that holds every row shown (e.g. the whole at-risk list) changes nothing,
            # so try the segments from the largest name down until one does.
            options = page.locator("select[name=segment] option")
            segments = [options.nth(i).get_attribute("value") for i in range(options.count())]
            changed = []
            for segment in sorted((s for s in segments if s), reverse=True):
                with page.expect_navigation(timeout=LOAD_TIMEOUT_MS):
                    page.select_option("select[name=segment]", segment)
                assert f"segment={segment}" in page.url and "window=7" in page.url
                if _numbers(page) != weekly:
                    changed.append(segment)
                    break
            assert changed, f"{view.path}: no segment changed the numbers"
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{view.slug}-filtered.png"),
                        full_page=True)

        # Navigating keeps the filters.
        other = next(v for v in VIEWS if v.slug != view.slug)
        page.click(f'nav a[data-view="{other.slug}"]')
        page.wait_for_load_state()
        assert "window=7" in page.url
    finally:
        page.close()
    assert not problems, problems


def test_bad_filter_in_the_browser_is_a_400_page(browser: Any, dashboard_url: str) -> None:
    page = browser.new_page()
    try:
        resp = page.goto(dashboard_url + "/funnel?cohort=2026-13-40", timeout=LOAD_TIMEOUT_MS)
        assert resp is not None and resp.status == 400
        assert "cohort" in page.locator("#error-message").inner_text()
        page.screenshot(path=str(ARTIFACTS / "dashboard-400.png"))
    finally:
        page.close()


def test_a_second_dashboard_on_the_same_directory_says_who_owns_it(
        dashboard_url: str, served_store_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dashboard", "--clickhouse", str(served_store_dir),
         "--port", "1"],
        cwd=ROOT, capture_output=True, timeout=120, check=False,
    )
    assert done.returncode != 0
    message = done.stderr.decode()
    assert str(served_store_dir) in message and "Traceback" not in message, message
