"""The at-risk list against a recount in Python from the raw rows (customer_score_history,
touchpoints, customer_scores), under each filter; the experiments page's test parameters (alpha,
power, minimum detectable effect): validated, and they change the figures."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from tests.browser.test_dashboard_oracles import _rows, _table, _window

HIGH_QUANTILE = 0.75
LOOKALIKE_BAR = 0.7


def _at_risk(client: Any, start: datetime, end: datetime,
             filters: dict[str, str]) -> list[tuple[str, float]]:
    """(customer, drop) of everyone at risk in [start, end), largest drop first: the page's
    definition, recounted from plain rows."""
    start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)  # rows come naive, in UTC
    history: dict[tuple[str, date], tuple[Any, ...]] = {}
    for cid, day, ts, p_convert, lookalike in _rows(
            client, "SELECT customer_id, day, ts, p_convert, lookalike "
            "FROM customer_score_history"):
        if (cid, day) not in history or history[(cid, day)][0] < ts:
            history[(cid, day)] = (ts, p_convert, lookalike)
    scores: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for (cid, _), row in history.items():
        scores[cid].append(row)
    value: dict[str, float] = defaultdict(float)
    first: dict[str, datetime] = {}
    used: dict[str, set[str]] = defaultdict(set)
    for cid, ts, revenue, channel in _rows(
            client, "SELECT customer_id, occurred_at, revenue, channel FROM touchpoints"):
        if ts < end:
            value[cid] += revenue
        first[cid] = min(first.get(cid, ts), ts)
        if start <= ts < end:
            used[cid].add(channel)
    segment = dict(_rows(client, "SELECT customer_id, segment FROM customer_scores"))
    paying = sorted(v for v in value.values() if v > 0)
    high = paying[int(HIGH_QUANTILE * len(paying))]
    out = []
    for cid, rows in scores.items():
        rows = sorted(r for r in rows if r[0] < end)
        before = [r for r in rows if r[0] < start]
        if not before or len(before) == len(rows):
            continue
        p_before, p_now, lookalike = before[-1][1], rows[-1][1], rows[-1][2]
        if not p_now < p_before:
            continue
        if not (0 < value.get(cid, 0.0) >= high or (lookalike or 0.0) >= LOOKALIKE_BAR):
            continue
        if "segment" in filters and segment.get(cid) != filters["segment"]:
            continue
        if "channel" in filters and filters["channel"] not in used[cid]:
            continue
        if "cohort" in filters:
            seen = first[cid].date()
            if str(seen - timedelta(days=seen.weekday())) != filters["cohort"]:
                continue
        out.append((cid, p_before - p_now))
    return sorted(out, key=lambda x: (-x[1], x[0]))


def _narrowing(client: Any) -> dict[str, str]:
    """Filter values that keep someone on the unfiltered list: the segment and first-seen week of
    the customer with the smallest drop, and the most used channel that some customer on the
    list did not use in the window (so it narrows the list)."""
    page = client.get("/at-risk", params={"window": "30"}).text
    start, end = _window(page)
    listed = [cid for cid, _ in _at_risk(client, start, end, {})]
    last = listed[-1]
    segment = _rows(client, "SELECT segment FROM customer_scores WHERE customer_id = {c:String}",
                    c=last)[0][0]
    first = _rows(client, "SELECT toString(toMonday(min(occurred_at))) FROM touchpoints "
                  "WHERE customer_id = {c:String}", c=last)[0][0]
    used = dict(_rows(
        client, "SELECT channel, uniqExact(customer_id) FROM touchpoints "
        "WHERE occurred_at >= {a:DateTime64(3, 'UTC')} AND occurred_at < {b:DateTime64(3, 'UTC')} "
        "AND has(splitByChar(',', {ids:String}), customer_id) GROUP BY channel",
        a=start.strftime("%Y-%m-%d %H:%M:%S"), b=end.strftime("%Y-%m-%d %H:%M:%S"),
        ids=",".join(listed)))
    channel = max((c for c, n in used.items() if n < len(listed)), key=lambda c: (used[c], c))
    return {"segment": segment, "cohort": first, "channel": channel}


@pytest.mark.parametrize("name", [None, "segment", "channel", "cohort", "window"])
def test_at_risk_list_matches_a_recount(http_client: Any, name: str | None) -> None:
    params = {"window": "30"}
    if name == "window":
        params["window"] = "14"
    elif name is not None:
        params[name] = _narrowing(http_client)[name]
    page = http_client.get("/at-risk", params=params)
    assert page.status_code == 200, page.text[:2000]
    start, end = _window(page.text)
    want = _at_risk(http_client, start, end,
                    {k: v for k, v in params.items() if k != "window"})
    if name is None:
        assert len(want) >= 5, "the demo data should put several customers at risk"
    else:
        assert want, f"{name}={params.get(name)} should keep someone on the list"
    n = int(re.search(r'id="n-at-risk">(\d+)<', page.text)[1])  # type: ignore[index]
    assert n == len(want)
    shown = _table(page.text, "at-risk")
    if not want:
        assert "nobody at risk" in shown[0][0]
        return
    assert [r[0] for r in shown] == [cid for cid, _ in want[:50]]
    for row, (_, drop) in zip(shown, want, strict=False):
        p_before, p_now, shown_drop = (float(x) for x in row[3:6])
        assert float(shown_drop) == pytest.approx(drop, abs=6e-5)
        assert p_before > p_now


def test_at_risk_count_is_compared_with_the_previous_period(http_client: Any) -> None:
    page = http_client.get("/at-risk", params={"window": "30"}).text
    start, end = _window(page)
    before = _at_risk(http_client, start - (end - start), start, {})
    now = _at_risk(http_client, start, end, {})
    trend = re.search(r'id="n-at-risk">\d+</b> <span class="([^"]+)"[^>]*>(.*?)</span>', page)
    assert trend is not None
    if before and len(now) != len(before):
        rel = (len(now) - len(before)) / len(before)
        assert f"{rel:+.0%}" in trend[2] or abs(rel) < 0.005


BAD_TEST_PARAMS = [
    ({"alpha": "0"}, "alpha='0' is not a number strictly between 0 and 0.5"),
    ({"alpha": "0.7"}, "alpha"),
    ({"alpha": "five percent"}, "alpha"),
    ({"power": "1"}, "power='1' is not a number strictly between 0.5 and 1"),
    ({"power": "nan"}, "power"),
    ({"mde": "-0.02"}, "mde"),
    ({"mde": "inf"}, "mde"),
    ({"mde": "2pp"}, "e.g. mde=0.02"),
]


@pytest.mark.parametrize(("params", "says"), BAD_TEST_PARAMS)
def test_bad_test_parameters_are_a_clear_400(http_client: Any, params: dict[str, str],
                                             says: str) -> None:
    resp = http_client.get("/experiments", params=params)
    assert resp.status_code == 400, resp.text[:2000]
    message = re.search(r'id="error-message">(.*?)</div>', resp.text, re.S)
    assert message and says in message[1].replace("&#39;", "'"), resp.text[:2000]


def _figures(page: str) -> dict[str, list[str]]:
    table = re.search(r'<table id="experiment-checkout">(.*?)</table>', page, re.S)
    assert table, page[:2000]
    body = table[1]
    return {name: re.findall(rf"<td[^>]*data-{name}[^>]*>(.*?)</td>", body, re.S)
            for name in ("required", "p", "alpha")}


def test_test_parameters_change_the_figures(http_client: Any) -> None:
    window = {"window": "366"}  # the whole experiment
    plain = http_client.get("/experiments", params=window).text
    base = _figures(plain)
    assert base["required"] and base["p"]
    assert "alpha 0.05" in plain and "power 80 %" in plain and "effect\n2 pp" in plain
    for change in ({"mde": "0.05"}, {"power": "0.95"}, {"alpha": "0.01"}):
        page = http_client.get("/experiments", params={**window, **change}).text
        figures = _figures(page)
        assert figures["required"] != base["required"], change
    # a larger effect needs fewer customers; a stricter alpha shows a smaller corrected alpha
    wide = _figures(http_client.get("/experiments", params={**window, "mde": "0.05"}).text)
    n = [int(x.replace(",", "")) for x in base["required"]]
    n_wide = [int(x.replace(",", "")) for x in wide["required"]]
    assert all(a < b for a, b in zip(n_wide, n, strict=True))
    strict = http_client.get("/experiments", params={**window, "alpha": "0.01"}).text
    assert re.findall(r"data-alpha>([\d.]+)<", strict) == ["0.01"]
    assert re.findall(r"data-alpha>([\d.]+)<", plain) == ["0.05"]
