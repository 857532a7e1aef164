"""Dashboard: live views over the analyst tables (see docs/dashboard.md).

Eight server-rendered pages (Jinja2 + inline SVG from :mod:`streams.web.charts`): the journey map,
the funnel, segment profiles, attribution, the at-risk list, feature-adoption gaps, the alert
feed and the experiments (statistics from :mod:`processors.experiments`). Every page takes the
same filters as query parameters (``segment``, ``channel``, ``cohort``, ``window``, ``end``); each
one adds a condition to the SQL, and every value travels as a server-side ``{name:Type}``
parameter. Numbers come with their change against the previous period of the same length. A bad
parameter is a 400 page that says what is wrong.

One process owns an embedded chDB directory at a time: the dashboard opens the store once and
serialises its queries with a lock (the chDB session is not shared between threads).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from processors.attribution import Path as JourneyPath
from processors.attribution import attribute
from processors.errors import JourneymapError, QueryError, SchemaError, ServiceError
from processors.events import Channel
from processors.experiments import ALL, Comparison, Intervention, VariantOutcome, analyse
from sinks import experiments as stored_experiments
from sinks.clickhouse import Store, check_schema, connect, run_query
from streams.web import charts

router = APIRouter(include_in_schema=False)
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.filters["ms_time"] = (
    lambda ms: f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M}")

CHANNELS: tuple[str, ...] = get_args(Channel)
COMMON_PARAMS = ("segment", "channel", "cohort", "window", "end")
DEFAULT_WINDOW_D = 30
MAX_WINDOW_D = 366
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WINDOW = re.compile(r"^(\d{1,4})d?$")
_USED = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")
_QUERY_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()


class BadRequest(Exception):
    """A query parameter was wrong; the message says which and what would be valid."""


# -- the store -----------------------------------------------------------------------------------


def open_store(app: FastAPI) -> Store:
    """The store the dashboard reads: opened once per app (the owner of an embedded directory)."""
    store: Store | None = getattr(app.state, "dashboard_store", None)
    if store is not None:
        return store
    with _OPEN_LOCK:
        store = getattr(app.state, "dashboard_store", None)
        if store is None:
            store = connect(app.state.settings.clickhouse)
            try:
                check_schema(store)
            except JourneymapError:
                store.close()
                raise
            app.state.dashboard_store = store
    return store


def close_store(app: FastAPI) -> None:
    store: Store | None = getattr(app.state, "dashboard_store", None)
    if store is not None:
        store.close()
        app.state.dashboard_store = None


def _query(store: Store, sql: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Run `sql` with the parameters it uses (the scope carries more than one query needs)."""
    used = set(_USED.findall(sql))
    with _QUERY_LOCK:
        result = run_query(store, sql, {k: v for k, v in params.items() if k in used})
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


# -- filters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The parsed query parameters of a page. `segment`/`channel` '*' and `cohort` None: all."""

    segment: str = "*"
    channel: str = "*"
    cohort: date | None = None
    window_d: int = DEFAULT_WINDOW_D
    end: date | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def query(self, **changes: str) -> str:
        """This page's query string with some parameters changed (links between views)."""
        values = {
            "segment": "" if self.segment == "*" else self.segment,
            "channel": "" if self.channel == "*" else self.channel,
            "cohort": self.cohort.isoformat() if self.cohort else "",
            "window": str(self.window_d),
            "end": self.end.isoformat() if self.end else "",
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def _day(name: str, value: str) -> date:
    if not _DAY.match(value):
        raise BadRequest(f"{name}={value!r} is not a date: write it as YYYY-MM-DD, e.g. 2026-03-02")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not a valid calendar date") from None


def parse_filters(items: Sequence[tuple[str, str]], extra: Sequence[str] = ()) -> Filters:
    """Validate a page's query parameters (syntax only; known values are checked by `scope`)."""
    allowed = (*COMMON_PARAMS, *extra)
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            raise BadRequest(
                f"unknown parameter {name!r}: this page takes {', '.join(allowed)}"
            )
        if name in seen:
            raise BadRequest(f"parameter {name!r} is given twice; give it once")
        if len(value) > 200:
            raise BadRequest(f"parameter {name!r} is too long ({len(value)} characters)")
        seen[name] = value.strip()
    segment = seen.get("segment") or "*"
    if segment != "*" and not _NAME.match(segment):
        raise BadRequest(
            f"segment={segment!r} is not a segment name (letters, digits, _ . : -); "
            "leave it empty for all segments"
        )
    channel = seen.get("channel") or "*"
    if channel != "*" and channel not in CHANNELS:
        raise BadRequest(f"channel={channel!r} is not a channel: use one of {', '.join(CHANNELS)}")
    cohort = _day("cohort", seen["cohort"]) if seen.get("cohort") else None
    if cohort is not None and cohort.weekday() != 0:
        monday = cohort - timedelta(days=cohort.weekday())
        raise BadRequest(
            f"cohort={cohort} is a {cohort:%A}: a cohort is the week (its Monday) a customer was "
            f"first seen, e.g. cohort={monday}"
        )
    window_d = DEFAULT_WINDOW_D
    if seen.get("window"):
        match = _WINDOW.match(seen["window"])
        if not match or not 1 <= int(match[1]) <= MAX_WINDOW_D:
            raise BadRequest(
                f"window={seen['window']!r} is not a number of days between 1 and {MAX_WINDOW_D} "
                "(e.g. window=7 or window=30d)"
            )
        window_d = int(match[1])
    end = _day("end", seen["end"]) if seen.get("end") else None
    extras = {k: seen[k] for k in extra if seen.get(k)}
    return Filters(segment, channel, cohort, window_d, end, extras)


@dataclass
class Scope:
    """Filters resolved against the data: the two periods compared and the SQL conditions.

    `start`..`end` is the window; `prev_start`..`start` the previous period of the same length.
    Without `end` the window ends with the day of the newest touchpoint (event time), so a replay
    of last quarter's events shows last quarter.
    """

    filters: Filters
    start: datetime
    end: datetime
    prev_start: datetime
    conversion: list[str]
    segments: list[str]
    cohorts: list[date]
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.filters
        self.params.update(
            start=_ts(self.start), end=_ts(self.end), prev_start=_ts(self.prev_start),
            conversion=",".join(self.conversion),
        )
        if f.segment != "*":
            self.params["segment"] = f.segment
        if f.channel != "*":
            self.params["channel"] = f.channel
        if f.cohort is not None:
            self.params["cohort"] = f.cohort.isoformat()

    def customers(self, col: str = "customer_id", *, segment: bool = True,
                  channel: bool = False) -> list[str]:
        """Conditions on the customer: current segment, first-seen week, used the channel."""
        f, conds = self.filters, []
        if segment and f.segment != "*":
            conds.append(f"{col} IN (SELECT customer_id FROM customer_scores "
                         "WHERE segment = {segment:String})")
        if f.cohort is not None:
            conds.append(f"{col} IN (SELECT customer_id FROM touchpoints GROUP BY customer_id "
                         "HAVING toMonday(min(occurred_at)) = {cohort:Date})")
        if channel and f.channel != "*":
            conds.append(f"{col} IN (SELECT customer_id FROM touchpoints "
                         "WHERE channel = {channel:String} AND occurred_at >= "
                         "{prev_start:DateTime64(3, 'UTC')} AND occurred_at < "
                         "{end:DateTime64(3, 'UTC')})")
        return conds

    def events(self, *, channel: bool = True, segment: bool = True) -> str:
        """WHERE clause over touchpoints for both periods (`cur` tells them apart)."""
        conds = ["occurred_at >= {prev_start:DateTime64(3, 'UTC')}",
                 "occurred_at < {end:DateTime64(3, 'UTC')}"]
        if channel and self.filters.channel != "*":
            conds.append("channel = {channel:String}")
        conds += self.customers(segment=segment)
        return " AND ".join(conds)

    @property
    def label(self) -> str:
        last = self.end - timedelta(days=1)
        return f"{self.start:%Y-%m-%d} .. {last:%Y-%m-%d} ({self.filters.window_d} days)"

    @property
    def prev_label(self) -> str:
        return f"{self.prev_start:%Y-%m-%d} .. {self.start - timedelta(days=1):%Y-%m-%d}"


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.000")


CUR = "occurred_at >= {start:DateTime64(3, 'UTC')}"


def resolve(store: Store, filters: Filters, conversion: list[str]) -> Scope:
    """Check the filter values against the data and fix the window."""
    segments = [r["segment"] for r in _query(
        store, "SELECT DISTINCT segment FROM customer_scores ORDER BY segment", {})]
    if filters.segment != "*" and filters.segment not in segments:
        known = ", ".join(segments) or "none yet"
        raise BadRequest(f"segment={filters.segment!r} is not a known segment (known: {known})")
    cohorts = [r["week"] for r in _query(
        store, "SELECT DISTINCT toMonday(first) AS week FROM (SELECT min(occurred_at) AS first "
        "FROM touchpoints GROUP BY customer_id) ORDER BY week", {})]
    if filters.end is not None:
        end = datetime.combine(filters.end + timedelta(days=1), datetime.min.time(), UTC)
    else:
        newest = _query(store, "SELECT toDate(max(occurred_at)) AS day, count() AS n "
                        "FROM touchpoints", {})[0]
        day = newest["day"] if newest["n"] else datetime.now(UTC).date()
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    start = end - timedelta(days=filters.window_d)
    return Scope(filters, start, end, start - timedelta(days=filters.window_d), conversion,
                 segments, cohorts)


# -- KPIs shown on every page --------------------------------------------------------------------


def kpis(store: Store, scope: Scope) -> list[dict[str, Any]]:
    rows = _query(store, f"""
        SELECT {CUR} AS cur, uniqExact(customer_id) AS customers, count() AS events,
               uniqExactIf(customer_id, has(splitByChar(',', {{conversion:String}}), touchpoint))
                   AS converted,
               sum(revenue) AS revenue
        FROM touchpoints WHERE {scope.events()}
        GROUP BY cur""", scope.params)
    now = next((r for r in rows if r["cur"]), {})
    before = next((r for r in rows if not r["cur"]), {})

    def rate(r: dict[str, Any]) -> float | None:
        return r["converted"] / r["customers"] if r.get("customers") else None

    return [
        {"label": "active customers", "value": f"{now.get('customers', 0):,}",
         "trend": charts.trend(now.get("customers", 0), before.get("customers", 0))},
        {"label": "touchpoints", "value": f"{now.get('events', 0):,}",
         "trend": charts.trend(now.get("events", 0), before.get("events", 0))},
        {"label": "converted", "value": _pct(rate(now)),
         "trend": charts.trend(rate(now), rate(before), points=True)},
        {"label": "revenue", "value": f"{now.get('revenue', 0.0):,.0f}",
         "trend": charts.trend(now.get("revenue", 0.0), before.get("revenue", 0.0))},
    ]


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def _split(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> tuple[
        dict[Any, dict[str, Any]], dict[Any, dict[str, Any]]]:
    now = {key(r): r for r in rows if r["cur"]}
    before = {key(r): r for r in rows if not r["cur"]}
    return now, before


# -- views ---------------------------------------------------------------------------------------

PATHS_CTE = """
    SELECT customer_id, cur,
           arrayCompact(arrayMap(x -> x.2, arraySort(groupArray((occurred_at, touchpoint)))))
           AS path
    FROM (SELECT customer_id, occurred_at, touchpoint, {cur} AS cur FROM touchpoints
          WHERE {where})
    GROUP BY customer_id, cur
"""


def journey_view(store: Store, scope: Scope, top: int = 14) -> dict[str, Any]:
    paths = PATHS_CTE.format(cur=CUR, where=scope.events())
    rows = _query(store, f"""
        SELECT cur, pair.1 AS src, pair.2 AS dst, count() AS n, avg(pair.3) AS pos
        FROM ({paths})
        ARRAY JOIN arrayZip(arrayPushFront(arrayPopBack(path), 'start'), path,
                            arrayEnumerate(path)) AS pair
        GROUP BY cur, src, dst""", scope.params)
    now, before = _split(rows, lambda r: (r["src"], r["dst"]))
    out_now: dict[str, int] = {}
    out_before: dict[str, int] = {}
    for (src, _), r in now.items():
        out_now[src] = out_now.get(src, 0) + r["n"]
    for (src, _), r in before.items():
        out_before[src] = out_before.get(src, 0) + r["n"]
    edges = []
    for (src, dst), r in sorted(now.items(), key=lambda kv: (-kv[1]["n"], kv[0]))[:top]:
        p = r["n"] / out_now[src]
        prev = before.get((src, dst))
        p_prev = prev["n"] / out_before[src] if prev else None
        edges.append({"src": src, "dst": dst, "n": r["n"], "p": p, "p_prev": p_prev,
                      "trend": charts.trend(p, p_prev, points=True, higher_is_better=None)})
    weight: dict[str, list[float]] = {"start": [0.0, 1.0]}
    for (_, dst), r in now.items():
        acc = weight.setdefault(dst, [0.0, 0.0])
        acc[0] += r["pos"] * r["n"]
        acc[1] += r["n"]
    positions = {k: s / n for k, (s, n) in weight.items() if n}
    ranks = {v: i for i, v in enumerate(sorted({round(p) for p in positions.values()}))}
    positions = {k: float(ranks[round(p)]) for k, p in positions.items()}

    top_paths = _query(store, f"""
        SELECT cur, arraySlice(path, 1, 4) AS steps, count() AS n
        FROM ({paths}) WHERE length(path) > 1 GROUP BY cur, steps""", scope.params)
    p_now, p_before = _split(top_paths, lambda r: tuple(r["steps"]))
    best = sorted(p_now.items(), key=lambda kv: (-kv[1]["n"], kv[0]))[:8]
    path_rows = [{"steps": " → ".join(k), "n": r["n"],
                  "trend": charts.trend(r["n"], p_before.get(k, {}).get("n", 0))}
                 for k, r in best]
    return {
        "flow": charts.flow([(e["src"], e["dst"], e["n"], e["p"]) for e in edges], positions),
        "sankey": charts.sankey([(k, r["n"]) for k, r in best]),
        "edges": edges,
        "paths": path_rows,
    }


def _funnels(store: Store, settings: Any) -> dict[str, list[str]]:
    """Funnel name -> stages in order: the configured ones, then any other the tables hold."""
    out = {f.name: [s.name for s in f.stages] for f in settings.funnels}
    stored: dict[str, list[str]] = {}
    for r in _query(store, "SELECT funnel, stage_index, any(stage) AS stage FROM funnel_dropoff "
                    "GROUP BY funnel, stage_index ORDER BY funnel, stage_index", {}):
        stored.setdefault(r["funnel"], []).append(r["stage"])
    return out | {name: stages for name, stages in stored.items() if name not in out}


def funnel_view(store: Store, scope: Scope, settings: Any) -> dict[str, Any]:
    funnels = _funnels(store, settings)
    name = scope.filters.extra.get("funnel") or next(iter(funnels), "")
    if funnels and name not in funnels:
        raise BadRequest(f"funnel={name!r} is not a funnel (known: {', '.join(funnels)})")
    stages = funnels.get(name, [])
    params = {**scope.params, "funnel": name}
    where = " AND ".join([
        "funnel = {funnel:String}",
        "ts >= {prev_start:DateTime64(3, 'UTC')}", "ts < {end:DateTime64(3, 'UTC')}",
        *scope.customers(channel=True),
    ])
    cur = "ts >= {start:DateTime64(3, 'UTC')}"
    reached = _query(store, f"""
        SELECT {cur} AS cur, to_stage AS stage, uniqExact(customer_id) AS n
        FROM funnel_progress WHERE {where} GROUP BY cur, stage""", params)
    times = _query(store, f"""
        SELECT {cur} AS cur, from_stage AS stage,
               quantile(0.5)(time_in_prev_stage_ms) / 3600000 AS median_h,
               quantile(0.9)(time_in_prev_stage_ms) / 3600000 AS p90_h
        FROM funnel_progress
        WHERE {where} AND from_stage != '' AND time_in_prev_stage_ms IS NOT NULL
        GROUP BY cur, stage""", params)
    r_now, r_before = _split(reached, lambda r: r["stage"])
    t_now, t_before = _split(times, lambda r: r["stage"])
    rows = []
    for i, stage in enumerate(stages):
        n = r_now.get(stage, {}).get("n", 0)
        n_prev = r_before.get(stage, {}).get("n", 0)
        nxt = stages[i + 1] if i + 1 < len(stages) else None
        step = step_prev = None
        if nxt is not None:
            step = min(1.0, r_now.get(nxt, {}).get("n", 0) / n) if n else None
            nxt_prev = r_before.get(nxt, {}).get("n", 0)
            step_prev = min(1.0, nxt_prev / n_prev) if n_prev else None
        t, tp = t_now.get(stage, {}), t_before.get(stage, {})
        rows.append({
            "stage": stage, "n": n, "trend": charts.trend(n, n_prev),
            "advance": step, "drop": None if step is None else 1 - step,
            "advance_trend": charts.trend(step, step_prev, points=True),
            "median_h": t.get("median_h"), "p90_h": t.get("p90_h"),
            "median_trend": charts.trend(t.get("median_h"), tp.get("median_h"),
                                         higher_is_better=False),
            "has_next": nxt is not None,
        })
    first = rows[0]["n"] if rows else 0
    overall = rows[-1]["n"] / first if rows and first else None
    first_prev = r_before.get(stages[0], {}).get("n", 0) if stages else 0
    overall_prev = (r_before.get(stages[-1], {}).get("n", 0) / first_prev
                    if stages and first_prev else None)
    return {
        "funnel": name, "funnels": list(funnels), "rows": rows,
        "overall": overall, "overall_trend": charts.trend(overall, overall_prev, points=True),
        "chart": charts.funnel([(r["stage"], r["n"], r["drop"]) for r in rows]),
    }


def segments_view(store: Store, scope: Scope) -> dict[str, Any]:
    seg_cond = " AND s.segment = {segment:String}" if scope.filters.segment != "*" else ""
    activity = _query(store, f"""
        SELECT s.segment AS segment, t.cur AS cur, uniqExact(t.customer_id) AS active,
               count() AS events,
               uniqExactIf(t.customer_id,
                           has(splitByChar(',', {{conversion:String}}), t.touchpoint)) AS converted,
               sum(t.revenue) AS revenue, topK(3)(t.touchpoint) AS top_touchpoints
        FROM (SELECT customer_id, touchpoint, revenue, {CUR} AS cur FROM touchpoints
              WHERE {scope.events(segment=False)}) AS t
        INNER JOIN customer_scores AS s ON s.customer_id = t.customer_id
        WHERE 1 {seg_cond}
        GROUP BY segment, cur""", scope.params)
    score_where = " AND ".join(["1", *scope.customers(channel=True)])
    scores = {r["segment"]: r for r in _query(store, f"""
        SELECT segment, count() AS n, avg(p_convert) AS p_convert, avg(p_churn) AS p_churn,
               avg(lookalike) AS lookalike
        FROM customer_scores WHERE {score_where} GROUP BY segment""", scope.params)}
    snapshot = {r["segment"]: r for r in _query(store, """
        SELECT segment, size, conversion_rate, centroid FROM segments
        WHERE as_of = (SELECT max(as_of) FROM segments)""", {})}
    now, before = _split(activity, lambda r: r["segment"])
    rows = []
    for seg, r in sorted(now.items(), key=lambda kv: -kv[1]["active"]):
        b = before.get(seg, {})
        rate = r["converted"] / r["active"] if r["active"] else None
        rate_prev = b["converted"] / b["active"] if b.get("active") else None
        sc, snap = scores.get(seg, {}), snapshot.get(seg)
        centroid = orjson.loads(snap["centroid"]) if snap and snap["centroid"] else {}
        rows.append({
            "segment": seg, "active": r["active"],
            "active_trend": charts.trend(r["active"], b.get("active", 0)),
            "events_per": r["events"] / r["active"] if r["active"] else 0.0,
            "rate": rate, "rate_trend": charts.trend(rate, rate_prev, points=True),
            "revenue": r["revenue"], "revenue_trend": charts.trend(r["revenue"],
                                                                   b.get("revenue", 0.0)),
            "top": ", ".join(r["top_touchpoints"]),
            "p_convert": sc.get("p_convert"), "p_churn": sc.get("p_churn"),
            "n_scored": sc.get("n", 0),
            "centroid": ", ".join(f"{k} {v:.3g}" for k, v in list(centroid.items())[:5]
                                  if isinstance(v, int | float)),
        })
    return {"rows": rows, "chart": charts.hbars(
        [(r["segment"], r["active"], f"{r['active']:,} · {_pct(r['rate'])} converted")
         for r in rows])}


def attribution_view(store: Store, scope: Scope) -> dict[str, Any]:
    having = "WHERE has(steps, {channel:String})" if scope.filters.channel != "*" else ""
    rows = _query(store, f"""
        SELECT cur, steps, converted, count() AS n, sum(value) AS value
        FROM (
            SELECT cur, arrayMap(x -> x.2, sorted) AS chans, arrayMap(x -> x.3, sorted) AS tps,
                   arrayFirstIndex(t -> has(splitByChar(',', {{conversion:String}}), t), tps) AS k,
                   if(k > 0, arraySlice(chans, greatest(1, k - 30), least(k - 1, 30)),
                      arraySlice(chans, -30)) AS steps,
                   k > 0 AS converted,
                   if(k > 0, arrayMap(x -> x.4, sorted)[k], 0) AS value
            FROM (SELECT customer_id, {CUR} AS cur,
                         arraySort(groupArray((occurred_at, channel, touchpoint, revenue)))
                             AS sorted
                  FROM touchpoints WHERE {scope.events(channel=False)}
                  GROUP BY customer_id, cur)
        )
        {having}
        GROUP BY cur, steps, converted""", scope.params)

    def credit(cur: bool) -> tuple[dict[tuple[str, str], float], dict[str, float], float]:
        paths = [
            JourneyPath(tuple(r["steps"]), float(r["n"]) if r["converted"] else 0.0,
                        float(r["value"]) if r["converted"] else 0.0,
                        0.0 if r["converted"] else float(r["n"]))
            for r in rows if bool(r["cur"]) == cur and r["steps"]
        ]
        n_conv = sum(p.n_conversions for p in paths)
        shares: dict[tuple[str, str], float] = {}
        effects: dict[str, float] = {}
        if not n_conv:
            return shares, effects, 0.0
        for a in attribute(paths, orders=(1,)):
            shares[(a.key, a.model)] = a.conversions / n_conv
            if a.removal_effect is not None:
                effects[a.key] = a.removal_effect
        return shares, effects, n_conv

    shares, effects, n_conv = credit(True)
    shares_prev, _, n_conv_prev = credit(False)
    models = ["markov_1", "first_touch", "last_touch", "linear"]
    keys = sorted({k for k, _ in shares}, key=lambda k: -shares.get((k, "markov_1"), 0.0))
    table = [{
        "channel": k, "removal_effect": effects.get(k),
        **{m: shares.get((k, m), 0.0) for m in models},
        "trend": charts.trend(shares.get((k, "markov_1"), 0.0),
                              shares_prev.get((k, "markov_1")) if shares_prev else None,
                              points=True, higher_is_better=None),
    } for k in keys]
    return {"rows": table, "models": models, "n_conversions": n_conv,
            "conv_trend": charts.trend(n_conv, n_conv_prev),
            "chart": charts.grouped_bars(keys, models, {(k, m): v for (k, m), v in
                                                         shares.items() if m in models})}


# A customer at risk in a window [w_start, w_end): high value (lifetime revenue up to the window's
# end in the top quarter of paying customers, or a latest lookalike score of 0.7 or more), scored
# both before and during the window, and whose latest p_convert (last score before w_end) is
# below their last score before w_start (customer_score_history, migration 0010).
AT_RISK_SQL = """
    WITH hist AS (
        SELECT customer_id,
               argMaxIf(p_convert, ts, ts < {{w_start:DateTime64(3, 'UTC')}}) AS p_before,
               maxIf(day, ts < {{w_start:DateTime64(3, 'UTC')}}) AS day_before,
               argMax(p_convert, ts) AS p_now,
               argMax(p_churn, ts) AS p_churn,
               argMax(tuple(lookalike), ts).1 AS lookalike,
               argMax(segment, ts) AS segment,
               argMax(next_best_action, ts) AS next_best_action,
               countIf(ts < {{w_start:DateTime64(3, 'UTC')}}) AS n_before,
               countIf(ts >= {{w_start:DateTime64(3, 'UTC')}}) AS n_now
        FROM customer_score_history
        WHERE ts < {{w_end:DateTime64(3, 'UTC')}} {customers}
        GROUP BY customer_id
        HAVING n_before > 0 AND n_now > 0 AND p_now < p_before
    ),
    val AS (
        SELECT customer_id, sum(revenue) AS value FROM touchpoints
        WHERE occurred_at < {{w_end:DateTime64(3, 'UTC')}} GROUP BY customer_id
    ),
    bar AS (SELECT quantileExact(0.75)(value) AS high FROM val WHERE value > 0)
    SELECT h.customer_id AS customer_id, h.segment AS segment, v.value AS value,
           h.p_before AS p_before, h.day_before AS day_before, h.p_now AS p_now,
           toFloat64(h.p_before) - toFloat64(h.p_now) AS drop,
           h.p_churn AS p_churn, h.lookalike AS lookalike, h.next_best_action AS next_best_action
    FROM hist AS h
    LEFT JOIN val AS v ON v.customer_id = h.customer_id
    WHERE (v.value > 0 AND v.value >= (SELECT high FROM bar)) OR ifNull(h.lookalike, 0) >= 0.7
    ORDER BY drop DESC, customer_id
    LIMIT {limit}
"""
AT_RISK_CHANNEL = (" AND customer_id IN (SELECT customer_id FROM touchpoints "
                   "WHERE channel = {channel:String} "
                   "AND occurred_at >= {w_start:DateTime64(3, 'UTC')} "
                   "AND occurred_at < {w_end:DateTime64(3, 'UTC')})")


def at_risk_view(store: Store, scope: Scope, limit: int = 50) -> dict[str, Any]:
    """High-value customers whose propensity fell during the window, by the size of the drop,
    with their daily scores from the day of the score compared against; the count against the
    previous period's."""
    customers = "".join(f" AND {c}" for c in scope.customers())
    if scope.filters.channel != "*":
        customers += AT_RISK_CHANNEL

    def run(w_start: datetime, w_end: datetime, n: int) -> list[dict[str, Any]]:
        sql = AT_RISK_SQL.format(customers=customers, limit=n)
        return _query(store, sql, {**scope.params, "w_start": _ts(w_start), "w_end": _ts(w_end)})

    every = run(scope.start, scope.end, 1_000_000)
    before = run(scope.prev_start, scope.start, 1_000_000)
    rows = every[:limit]
    daily: dict[str, list[tuple[date, float]]] = {}
    if rows:
        for r in _query(store, """
                SELECT customer_id, day, p_convert FROM customer_score_history
                WHERE has(splitByChar(',', {ids:String}), customer_id)
                  AND day >= {first:Date} AND ts < {end:DateTime64(3, 'UTC')}
                ORDER BY customer_id, day""",
                {**scope.params, "ids": ",".join(r["customer_id"] for r in rows),
                 "first": min(r["day_before"] for r in rows).isoformat()}):
            daily.setdefault(r["customer_id"], []).append((r["day"], float(r["p_convert"])))
    for r in rows:
        r["trend"] = charts.trend(r["p_now"], r["p_before"], points=True)
        r["spark"] = charts.sparkline(
            [p for day, p in daily.get(r["customer_id"], []) if day >= r["day_before"]],
            label=f"p(convert), the last score of each day from {r['day_before']} "
                  "(the last score before the window) to the latest")
    return {"rows": rows, "n": len(every), "n_trend": charts.trend(
        len(every), len(before), higher_is_better=False)}


def adoption_view(store: Store, scope: Scope, top: int = 14,
                  min_active: int = 20) -> dict[str, Any]:
    focus = scope.filters.segment
    group = ("if(s.segment = {segment:String}, 'focus', 'others')" if focus != "*"
             else "s.segment")
    base = f"""
        FROM (SELECT customer_id, touchpoint, {CUR} AS cur FROM touchpoints
              WHERE {scope.events(segment=False)}) AS t
        INNER JOIN customer_scores AS s ON s.customer_id = t.customer_id"""
    reach = _query(store, f"""
        SELECT {group} AS grp, t.cur AS cur, t.touchpoint AS touchpoint,
               uniqExact(t.customer_id) AS n {base}
        GROUP BY grp, cur, touchpoint""", scope.params)
    active = {(r["grp"], r["cur"]): r["n"] for r in _query(store, f"""
        SELECT {group} AS grp, t.cur AS cur, uniqExact(t.customer_id) AS n {base}
        GROUP BY grp, cur""", scope.params)}
    share: dict[tuple[str, bool, str], float] = {}
    counts: dict[tuple[str, bool, str], int] = {}
    for r in reach:
        key = (r["grp"], bool(r["cur"]), r["touchpoint"])
        counts[key] = r["n"]
        share[key] = r["n"] / active[(r["grp"], r["cur"])]
    touchpoints = sorted({tp for _, _, tp in share})
    groups = sorted({g for g, _, _ in share})

    def others(g: str, cur: bool, tp: str) -> float | None:
        n = sum(counts.get((o, cur, tp), 0) for o in groups if o != g)
        d = sum(active.get((o, cur), 0) for o in groups if o != g)
        return n / d if d else None

    gaps: list[dict[str, Any]] = []
    for g in (["focus"] if focus != "*" else groups):
        if active.get((g, True), 0) < min_active or g == "all":  # too few, or not placed yet
            continue
        for tp in touchpoints:
            mine, rest = share.get((g, True, tp), 0.0), others(g, True, tp)
            if rest is None or not active.get((g, True)):
                continue
            mine_prev = share.get((g, False, tp)) if active.get((g, False)) else None
            gaps.append({
                "segment": focus if g == "focus" else g, "touchpoint": tp, "reach": mine,
                "others": rest, "gap": mine - rest,
                "trend": charts.trend(mine, mine_prev, points=True),
            })
    gaps.sort(key=lambda r: (r["gap"], r["segment"], r["touchpoint"]))
    shown = gaps[:top]
    return {"rows": shown, "focus": focus, "chart": charts.diverging(
        [(f"{r['segment']} · {r['touchpoint']}", r["gap"] * 100, f"{r['gap'] * 100:+.1f} pp")
         for r in shown])}


def alerts_view(store: Store, scope: Scope) -> dict[str, Any]:
    seg = " AND segment = {segment:String}" if scope.filters.segment != "*" else ""
    where = ("ts >= {prev_start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}" + seg)
    cur = "ts >= {start:DateTime64(3, 'UTC')}"
    alerts = _query(store, f"""
        SELECT {cur} AS cur, ts, kind, severity, segment, metric, message, evidence
        FROM alerts WHERE {where} ORDER BY ts DESC LIMIT 500""", scope.params)
    affected = {r["segment"]: r["n"] for r in _query(store, f"""
        SELECT s.segment AS segment, uniqExact(t.customer_id) AS n
        FROM (SELECT customer_id FROM touchpoints WHERE {scope.events(segment=False)}
              AND {CUR}) AS t
        INNER JOIN customer_scores AS s ON s.customer_id = t.customer_id
        GROUP BY segment""", scope.params)}
    now = [a for a in alerts if a["cur"]]
    before = [a for a in alerts if not a["cur"]]
    by_sev = []
    for sev in ("critical", "warning"):
        n, b = (sum(1 for a in xs if a["severity"] == sev) for xs in (now, before))
        by_sev.append({"severity": sev, "n": n,
                       "trend": charts.trend(n, b, higher_is_better=False)})
    for a in now:
        a["affected"] = affected.get(a["segment"], 0)
        try:
            ev = orjson.loads(a["evidence"]) if a["evidence"] else {}
        except orjson.JSONDecodeError:
            ev = {}
        a["evidence_text"] = ", ".join(f"{k}={v}" for k, v in list(ev.items())[:6])
    return {"alerts": now, "by_severity": by_sev}


# The windowed counterpart of the `experiment_outcomes` view (migration 0007): the customers
# assigned before the end of each period, and those of them who reached an outcome touchpoint
# in the period, at or after their assignment. A window reaching back to the experiment's start
# gives the same counts as `journeymap experiments analyse`.
EXPERIMENT_OUTCOMES_SQL = """
    SELECT a.variant AS variant, toString(a.segment) AS segment,
           countIf(a.assigned_at < {{end:DateTime64(3, 'UTC')}}) AS n_now,
           countIf(a.assigned_at < {{end:DateTime64(3, 'UTC')}} AND o.now > 0) AS x_now,
           countIf(a.assigned_at < {{start:DateTime64(3, 'UTC')}}) AS n_before,
           countIf(a.assigned_at < {{start:DateTime64(3, 'UTC')}} AND o.before > 0) AS x_before
    FROM (SELECT customer_id, variant, segment, assigned_at FROM experiment_assignments
          WHERE experiment = {{experiment:String}} {customers}) AS a
    LEFT JOIN (
        SELECT t.customer_id AS customer_id,
               countIf(t.occurred_at >= {{start:DateTime64(3, 'UTC')}}) AS now,
               countIf(t.occurred_at < {{start:DateTime64(3, 'UTC')}}) AS before
        FROM touchpoints AS t
        INNER JOIN (SELECT customer_id, assigned_at FROM experiment_assignments
                    WHERE experiment = {{experiment:String}}) AS a2
            ON a2.customer_id = t.customer_id
        WHERE has(splitByChar(',', {{outcomes:String}}), toString(t.touchpoint))
          AND t.occurred_at >= a2.assigned_at
          AND t.occurred_at >= {{prev_start:DateTime64(3, 'UTC')}}
          AND t.occurred_at < {{end:DateTime64(3, 'UTC')}}
        GROUP BY t.customer_id
    ) AS o ON o.customer_id = a.customer_id
    GROUP BY variant, segment
"""


def _segment_label(segment: str) -> str:
    return "all segments" if segment == ALL else segment


def _verdict(c: Comparison, planned: int) -> str:
    """One comparison in plain words: what to conclude, or why not yet."""
    if c.warnings:
        target = planned or c.required_n_per_variant
        return (f"too early: {min(c.n, c.control_n):,} of {target:,} customers per variant; "
                "do not act on this p-value yet")
    if not c.significant:
        return (f"no difference detected (p = {c.test.p_value:.3f}, needs < {c.alpha:.3g}); "
                "the true effect, if any, lies in the interval")
    better = "better" if c.test.diff > 0 else "worse"
    return f"{c.variant} converts {better} than {c.control} (p = {c.test.p_value:.3g})"


@dataclass(frozen=True)
class StatParams:
    """The experiments page's test parameters: significance level (before the Bonferroni
    correction), power and minimum detectable effect (an absolute lift, 0.02 = 2 pp)."""

    alpha: float = 0.05
    power: float = 0.8
    mde: float = 0.02


# name -> (lowest, highest, both excluded; an example) as `journeymap experiments analyse` takes
STAT_PARAM_RANGES: dict[str, tuple[float, float, str]] = {
    "alpha": (0.0, 0.5, "alpha=0.05"),
    "power": (0.5, 1.0, "power=0.8"),
    "mde": (0.0, 1.0, "mde=0.02 for a lift of 2 percentage points"),
}


def stat_params(extra: Mapping[str, str]) -> StatParams:
    """Validate `alpha`, `power` and `mde` (each optional: the defaults of the CLI)."""
    values: dict[str, float] = {}
    for name, (low, high, example) in STAT_PARAM_RANGES.items():
        if not extra.get(name):
            continue
        raw = extra[name]
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low < value < high:  # also rejects nan and inf
            raise BadRequest(f"{name}={raw!r} is not a number strictly between {low:g} and "
                             f"{high:g} (e.g. {example})")
        values[name] = value
    return StatParams(**values)


def _experiment(store: Store, scope: Scope, iv: Intervention,
                every: list[Intervention], params: StatParams) -> dict[str, Any]:
    """One A/B test in the window: the variants, the test against the control, the warnings."""
    customers = "".join(f" AND {c}" for c in scope.customers(channel=True))
    rows = _query(store, EXPERIMENT_OUTCOMES_SQL.format(customers=customers), {
        **scope.params, "experiment": iv.experiment,
        "outcomes": ",".join(iv.outcome_touchpoints)})
    stats = {"alpha": params.alpha, "power": params.power, "mde": params.mde}
    now = analyse(iv, [VariantOutcome(r["variant"], r["segment"], r["n_now"], r["x_now"])
                       for r in rows], every, **stats)
    before = analyse(iv, [VariantOutcome(r["variant"], r["segment"], r["n_before"],
                                         r["x_before"]) for r in rows], every, **stats)
    prev = {(c.segment, c.variant): c for c in before.comparisons}
    comparisons = now.comparisons
    if len({c.segment for c in comparisons} - {ALL}) == 1:  # one segment: the same as overall
        comparisons = tuple(c for c in comparisons if c.segment == ALL)
    table: list[dict[str, Any]] = []
    for c in comparisons:
        p = prev.get((c.segment, c.variant))
        if not any(r["segment"] == _segment_label(c.segment) for r in table):  # control once
            table.append({
                "segment": _segment_label(c.segment), "variant": c.control, "control": True,
                "n": c.control_n,
                "conversions": c.control_conversions, "rate": c.control_rate,
                "rate_trend": charts.trend(c.control_rate, p.control_rate if p else None,
                                           points=True)})
        table.append({
            "segment": _segment_label(c.segment), "variant": c.variant, "control": False,
            "n": c.n,
            "conversions": c.conversions, "rate": c.rate,
            "rate_trend": charts.trend(c.rate, p.rate if p else None, points=True),
            "diff": c.test.diff, "ci_low": c.test.ci_low, "ci_high": c.test.ci_high,
            "p_value": c.test.p_value, "alpha": c.alpha, "significant": c.significant,
            "needed": iv.planned_n_per_variant or c.required_n_per_variant,
            "required": c.required_n_per_variant, "reached": min(c.n, c.control_n),
            "verdict": _verdict(c, iv.planned_n_per_variant),
            "diff_trend": charts.trend(c.test.diff, p.test.diff if p else None, points=True,
                                       higher_is_better=None)})
    warnings = [*now.warnings, *(f"{_segment_label(c.segment)}, {c.variant}: {w}"
                                 for c in comparisons for w in c.warnings)]
    chart = charts.intervals([
        (f"{_segment_label(c.segment)} · {c.variant}", c.test.ci_low * 100, c.test.diff * 100,
         c.test.ci_high * 100,
         f"{c.test.diff * 100:+.1f} pp [{c.test.ci_low * 100:+.1f}, {c.test.ci_high * 100:+.1f}]")
        for c in comparisons])
    return {"iv": iv, "rows": table, "warnings": warnings, "chart": chart}


def experiments_view(store: Store, scope: Scope) -> dict[str, Any]:
    """Interventions live in the window (for the segment and channel, or for everyone) and the
    analysis of each A/B test among them, with the page's alpha, power and MDE."""
    params = stat_params(scope.filters.extra)
    seg = (" AND segment IN ('*', {segment:String})" if scope.filters.segment != "*" else "")
    seg += (" AND channel IN ('*', {channel:String})" if scope.filters.channel != "*" else "")
    live = _query(store, f"""
        SELECT intervention_id,
               ifNull(ended_at >= {{start:DateTime64(3, 'UTC')}}, 1)
                   AND started_at < {{end:DateTime64(3, 'UTC')}} AS now,
               started_at < {{start:DateTime64(3, 'UTC')}} AS before
        FROM interventions
        WHERE started_at < {{end:DateTime64(3, 'UTC')}}
          AND ifNull(ended_at >= {{prev_start:DateTime64(3, 'UTC')}}, 1) {seg}""", scope.params)
    with _QUERY_LOCK:
        every = stored_experiments.interventions(store)
    ids = {r["intervention_id"] for r in live if r["now"]}
    shown = [iv for iv in every if iv.intervention_id in ids]
    latest = {iv.experiment: iv for iv in every if iv.experiment}  # as the CLI: the newest
    tests = [_experiment(store, scope, iv, every, params) for iv in shown
             if iv.experiment and latest[iv.experiment] is iv]
    return {"interventions": shown, "experiments": tests, "test": params,
            "n_live": len(ids), "live_trend": charts.trend(
                len(ids), sum(1 for r in live if r["before"]), higher_is_better=None)}


# -- pages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    slug: str
    path: str
    title: str
    audience: str
    extra: tuple[str, ...] = ()


VIEWS: tuple[View, ...] = (
    View("journey", "/", "Journey map", "everyone"),
    View("funnel", "/funnel", "Funnel", "growth", ("funnel",)),
    View("segments", "/segments", "Segments", "marketing"),
    View("attribution", "/attribution", "Attribution", "marketing"),
    View("at_risk", "/at-risk", "At risk", "sales"),
    View("adoption", "/adoption", "Adoption gaps", "product"),
    View("alerts", "/alerts", "Alerts", "support"),
    View("experiments", "/experiments", "Experiments", "product and growth",
         ("alpha", "power", "mde")),
)


BUILDERS: dict[str, Callable[[Store, Scope, Any], dict[str, Any]]] = {
    "journey": lambda store, scope, _: journey_view(store, scope),
    "funnel": funnel_view,
    "segments": lambda store, scope, _: segments_view(store, scope),
    "attribution": lambda store, scope, _: attribution_view(store, scope),
    "at_risk": lambda store, scope, _: at_risk_view(store, scope),
    "adoption": lambda store, scope, _: adoption_view(store, scope),
    "alerts": lambda store, scope, _: alerts_view(store, scope),
    "experiments": lambda store, scope, _: experiments_view(store, scope),
}


def _error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "error.html",
        {"status": status, "title": title, "message": message, "views": VIEWS},
        status_code=status,
    )


def render(request: Request, view: View) -> HTMLResponse:
    settings = request.app.state.settings
    try:
        filters = parse_filters(request.query_params.multi_items(), view.extra)
        store = open_store(request.app)
        scope = resolve(store, filters, list(settings.outcomes.conversion))
        body = BUILDERS[view.slug](store, scope, settings)
        strip = kpis(store, scope)
    except BadRequest as exc:
        return _error(request, 400, "Bad request", str(exc))
    except (SchemaError, ServiceError) as exc:
        return _error(request, 503, "The analyst tables are not available", str(exc))
    except QueryError as exc:
        return _error(request, 500, "A dashboard query failed", str(exc))
    return TEMPLATES.TemplateResponse(request, f"{view.slug}.html", {
        "view": view, "views": VIEWS, "f": filters, "scope": scope, "kpis": strip,
        "channels": CHANNELS, **body,
    })


def _route(view: View) -> Callable[[Request], HTMLResponse]:
    def page(request: Request) -> HTMLResponse:
        return render(request, view)

    page.__name__ = f"dashboard_{view.slug}"
    return page


for _view in VIEWS:
    router.add_api_route(_view.path, _route(_view), methods=["GET"], response_class=HTMLResponse,
                         name=f"dashboard_{_view.slug}")
