"""The dashboard's numbers against a recount in Python from the raw rows of the same store.

The SQL of each view is checked by an independent computation: touchpoints read plainly and
turned into transitions, funnel stages and attribution paths here, in a few lines of Python.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.attribution import Path as JourneyPath
from processors.attribution import heuristic_attribution
from sinks.clickhouse import run_query

WINDOW_D = 30


def _window(page: str) -> tuple[datetime, datetime]:
    first, last = re.search(r"Window (\S+) \.\. (\S+)", page).groups()  # type: ignore[union-attr]
    start = datetime.fromisoformat(first).replace(tzinfo=UTC)
    return start, datetime.fromisoformat(last).replace(tzinfo=UTC) + timedelta(days=1)


def _rows(client: Any, sql: str, **params: str) -> list[tuple[Any, ...]]:
    return run_query(client.app.state.dashboard_store, sql, params).rows


def _table(page: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)[1]  # type: ignore[index]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)[1:]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows]


def _journeys(client: Any, start: datetime, end: datetime) -> dict[str, list[tuple[Any, ...]]]:
    per: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for cid, ts, tp, channel, revenue in _rows(
        client,
        "SELECT customer_id, occurred_at, touchpoint, channel, revenue FROM touchpoints "
        "WHERE occurred_at >= {a:DateTime64(3, 'UTC')} AND occurred_at < {b:DateTime64(3, 'UTC')}",
        a=start.strftime("%Y-%m-%d %H:%M:%S"), b=end.strftime("%Y-%m-%d %H:%M:%S"),
    ):
        per[cid].append((ts, tp, channel, revenue))
    for steps in per.values():
        steps.sort()
    return per


def test_journey_transitions_match_a_recount(http_client: Any) -> None:
    page = http_client.get("/", params={"window": str(WINDOW_D)}).text
    start, end = _window(page)
    moves: Counter[tuple[str, str]] = Counter()
    for steps in _journeys(http_client, start, end).values():
        path = [tp for _, tp, _, _ in steps]
        compact = [tp for i, tp in enumerate(path) if i == 0 or tp != path[i - 1]]
        moves.update(zip(["start", *compact[:-1]], compact, strict=True))
    out = Counter[str]()
    for (src, _), n in moves.items():
        out[src] += n
    shown = _table(page, "transitions")
    assert len(shown) == 14
    for src, dst, n, p, *_ in shown:
        assert moves[(src, dst)] == int(n.replace(",", "")), (src, dst)
        assert float(p) == pytest.approx(moves[(src, dst)] / out[src], abs=5e-4)
    top = sorted(moves.values(), reverse=True)[:14]
    assert [int(r[2].replace(",", "")) for r in shown] == top


def test_funnel_reach_matches_a_recount(http_client: Any) -> None:
    page = http_client.get("/funnel", params={"window": str(WINDOW_D), "channel": "email"}).text
    start, end = _window(page)
    fmt = "%Y-%m-%d %H:%M:%S"
    emailed = {r[0] for r in _rows(
        http_client,
        "SELECT DISTINCT customer_id FROM touchpoints WHERE channel = 'email' "
        "AND occurred_at >= {a:DateTime64(3, 'UTC')} AND occurred_at < {b:DateTime64(3, 'UTC')}",
        a=(start - timedelta(days=WINDOW_D)).strftime(fmt), b=end.strftime(fmt))}
    reached: dict[str, set[str]] = defaultdict(set)
    for cid, stage in _rows(
        http_client,
        "SELECT customer_id, to_stage FROM funnel_progress WHERE funnel = 'signup_to_purchase' "
        "AND ts >= {a:DateTime64(3, 'UTC')} AND ts < {b:DateTime64(3, 'UTC')}",
        a=start.strftime(fmt), b=end.strftime(fmt),
    ):
        if cid in emailed:
            reached[stage].add(cid)
    shown = {row[0]: int(row[1].replace(",", "")) for row in _table(page, "stages")}
    assert shown == {stage: len(reached[stage]) for stage in shown}
    assert shown["visit"] > 0


def test_heuristic_attribution_matches_paths_built_in_python(http_client: Any) -> None:
    page = http_client.get("/attribution", params={"window": str(WINDOW_D)}).text
    start, end = _window(page)
    acc: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for steps in _journeys(http_client, start, end).values():
        k = next((i for i, (_, tp, _, _) in enumerate(steps) if tp == "purchase"), None)
        if k is None:
            acc[tuple(c for _, _, c, _ in steps[-30:])][2] += 1
        else:
            path = tuple(c for _, _, c, _ in steps[:k][-30:])
            acc[path][0] += 1
            acc[path][1] += steps[k][3]
    paths = [JourneyPath(p, c, v, n) for p, (c, v, n) in acc.items() if p]
    n_conv = sum(p.n_conversions for p in paths)
    expected = {(a.model, a.key): a.conversions / n_conv for a in heuristic_attribution(paths)}
    rows = _table(page, "attribution")
    assert rows
    for channel, _effect, _markov, first, last, linear, _trend in rows:
        for model, shown in (("first_touch", first), ("last_touch", last), ("linear", linear)):
            assert float(shown.rstrip("%")) == pytest.approx(
                100 * expected.get((model, channel), 0.0), abs=0.051), (channel, model)


@pytest.mark.parametrize("window", [str(WINDOW_D), "366"])
def test_experiment_counts_and_test_match_a_recount_and_scipy(http_client: Any,
                                                              window: str) -> None:
    from scipy.stats import chi2_contingency

    page = http_client.get("/experiments", params={"window": window}).text
    start, end = _window(page)
    assigned = {cid: (variant, at) for cid, variant, at in _rows(
        http_client, "SELECT customer_id, variant, assigned_at FROM experiment_assignments "
        "WHERE experiment = 'checkout'")}
    bought = defaultdict(list)
    for cid, ts in _rows(http_client,
                         "SELECT customer_id, occurred_at FROM touchpoints "
                         "WHERE touchpoint = 'purchase'"):
        bought[cid].append(ts.replace(tzinfo=UTC))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for cid, (variant, at) in assigned.items():
        at = at.replace(tzinfo=UTC)
        if at < end:
            counts[variant][0] += 1
            counts[variant][1] += any(max(at, start) <= ts < end for ts in bought[cid])
    rows = {r[1].removesuffix(" (control)"): r for r in _table(page, "experiment-checkout")}
    assert set(rows) == {"control", "b"}
    for variant, (n, x) in counts.items():
        assert rows[variant][2:4] == [f"{n:,}", f"{x:,}"], variant
    (n_a, x_a), (n_b, x_b) = counts["control"], counts["b"]
    chi2 = chi2_contingency([[x_a, n_a - x_a], [x_b, n_b - x_b]], correction=False)
    assert float(rows["b"][8].rstrip(" *")) == pytest.approx(chi2.pvalue, abs=1e-4)
    assert rows["b"][6] == f"{(x_b / n_b - x_a / n_a) * 100:+.2f} pp"
    if window == "366":  # the whole experiment: the same counts as `experiments analyse`
        from sinks.experiments import outcomes

        with_cli = {o.variant: [o.n, o.conversions]
                    for o in outcomes(http_client.app.state.dashboard_store, "checkout")}
        assert with_cli == dict(counts)
