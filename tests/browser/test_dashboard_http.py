"""The dashboard over HTTP (FastAPI TestClient, embedded chDB): bad parameters are clear 400
pages, never a 500; every filter changes the numbers of every view."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streams.web.dashboard import VIEWS
from tests.browser.pages import body_numbers

PATHS = [v.path for v in VIEWS]


@pytest.mark.parametrize("path", PATHS)
def test_every_view_loads(http_client: Any, path: str) -> None:
    resp = http_client.get(path)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.headers["content-type"].startswith("text/html")
    assert 'class="note"' in resp.text and "Healthy" in resp.text
    assert "trend" in resp.text  # every figure is shown against the previous period
    assert body_numbers(resp.text)


BAD = [
    ("/", {"window": "0"}, "window"),
    ("/", {"window": "abc"}, "window"),
    ("/", {"window": "9999"}, "window"),
    ("/funnel", {"channel": "tv"}, "channel"),
    ("/segments", {"segment": "' OR 1=1 --"}, "segment"),
    ("/segments", {"segment": "nope"}, "not a known segment"),
    ("/attribution", {"cohort": "2026-03-03"}, "Tuesday"),
    ("/at-risk", {"cohort": "2026-02-30"}, "not a valid calendar date"),
    ("/adoption", {"end": "yesterday"}, "YYYY-MM-DD"),
    ("/alerts", {"limit": "10"}, "unknown parameter"),
    ("/funnel", {"funnel": "nope"}, "not a funnel"),
    ("/", {"channel": "web'); DROP TABLE touchpoints; --"}, "channel"),
    ("/", {"segment": "x" * 300}, "too long"),
    ("/experiments", {"segment": "s1' OR '1'='1"}, "segment"),
    ("/experiments", {"window": "-7"}, "window"),
    ("/experiments", {"experiment": "checkout"}, "unknown parameter"),
]


@pytest.mark.parametrize(("path", "params", "says"), BAD)
def test_bad_parameters_are_a_clear_400(http_client: Any, path: str, params: dict[str, str],
                                        says: str) -> None:
    resp = http_client.get(path, params=params)
    assert resp.status_code == 400, resp.text[:2000]
    message = re.search(r'id="error-message">(.*?)</div>', resp.text, re.S)
    assert message and says in message[1].replace("&#39;", "'"), resp.text[:2000]
    assert "Traceback" not in resp.text


def test_a_parameter_given_twice_is_a_400(http_client: Any) -> None:
    resp = http_client.get("/?window=7&window=30")
    assert resp.status_code == 400 and "given twice" in resp.text


def test_parameters_are_escaped_in_the_error_page(http_client: Any) -> None:
    resp = http_client.get("/", params={"segment": "<script>alert(1)</script>"})
    assert resp.status_code == 400
    assert "<script>alert" not in resp.text and "&lt;script&gt;alert(1)" in resp.text


def test_the_tables_survive_sql_like_parameters(http_client: Any) -> None:
    before = http_client.get("/segments").text
    http_client.get("/", params={"channel": "web'); DROP TABLE touchpoints; --"})
    http_client.get("/", params={"segment": "s1' OR '1'='1"})
    assert body_numbers(http_client.get("/segments").text) == body_numbers(before)


def _known(http_client: Any) -> dict[str, str]:
    """A segment and a cohort that exist in the demo data (read from the filter form)."""
    page = http_client.get("/").text
    segments = re.findall(r'<option value="(s\d+)"', page)
    cohorts = re.findall(r'<option value="(\d{4}-\d{2}-\d{2})"', page)
    assert segments and cohorts
    alerts = http_client.get("/alerts").text
    alerted = set(re.findall(r'class="sev-\w+">\w+</td><td>([^<]+)</td>', alerts))
    assert alerted, "the demo data should hold a drift alert"
    quiet = [s for s in segments if s not in alerted]  # picking it must empty the alert feed
    return {"segment": segments[0], "quiet_segment": quiet[0],
            "cohort": cohorts[len(cohorts) // 2]}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["segment", "channel", "cohort", "window"])
def test_each_filter_changes_the_numbers(http_client: Any, path: str, name: str) -> None:
    known = _known(http_client)
    value = {"segment": known["segment"], "channel": "support", "cohort": known["cohort"],
             "window": "7"}[name]
    if path == "/alerts" and name == "window":
        value = "90"  # the demo's one drift alert is 2+ weeks before the data ends
    if path == "/alerts" and name == "segment":
        value = known["quiet_segment"]
    plain = http_client.get(path)
    filtered = http_client.get(path, params={name: value})
    assert plain.status_code == filtered.status_code == 200, filtered.text[:2000]
    assert body_numbers(filtered.text) != body_numbers(plain.text), (path, name)


def test_experiments_view_reads_the_test_in_plain_words(http_client: Any) -> None:
    page = http_client.get("/experiments").text
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)).replace("&#39;", "'")
    assert "one-click checkout" in text and "winter sale email" in text  # the interventions
    table = re.search(r'<table id="experiment-checkout">(.*?)</table>', page, re.S)
    assert table and "<td>control</td>" in table[1] and "baseline" in table[1]
    assert "data-lift" in table[1]
    assert re.search(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] pp", table[1])  # the interval
    assert "/ 4,000" in table[1]  # reached / planned per variant
    assert "peeking" in text and "several changes at once: 'winter sale email'" in text
    # A window after the campaign ended no longer lists it (the overlap warning stays: the
    # campaign overlapped the experiment).
    later = http_client.get("/experiments", params={"window": "7"}).text
    assert "winter sale email" not in later.split("<h1>", 1)[1].split("Experiment <code>")[0]
