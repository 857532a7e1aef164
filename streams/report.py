"""The journey map report: gathered from the analyst tables, printed or written as HTML.

Everything comes from ClickHouse through read-only queries, so the report looks the same after a
replay (embedded chDB) and on a server fed by the streaming workers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from sinks.clickhouse import Store, run_query

TOP_PATHS_SQL = """
SELECT path, count() AS customers, round(avg(converted), 3) AS conversion_rate
FROM (
    SELECT
        customer_id,
        arrayStringConcat(
            arraySlice(arrayMap(x -> x.2, arraySort(groupArray((occurred_at, touchpoint)))),
                       1, {max_steps:UInt8}), ' > ') AS path,
        max(has(splitByChar(',', {conversion:String}), touchpoint)) AS converted
    FROM touchpoints
    GROUP BY customer_id
)
GROUP BY path
ORDER BY customers DESC, path
LIMIT {limit:UInt16}
"""

OVERVIEW_SQL = """
SELECT
    count() AS events,
    uniqExact(customer_id) AS customers,
    countIf(has(splitByChar(',', {conversion:String}), touchpoint)) AS conversions,
    round(sum(revenue), 2) AS revenue,
    min(occurred_at) AS first_event,
    max(occurred_at) AS last_event
FROM touchpoints
"""

DEAD_SQL = "SELECT stage, count() AS n FROM dead_letters GROUP BY stage ORDER BY n DESC"

TRANSITIONS_SQL = """
SELECT src, dst, sum(n) AS n
FROM transition_cells_current
GROUP BY src, dst
HAVING n > 0
ORDER BY n DESC
"""

FUNNEL_SQL = """
SELECT funnel, stage_index, stage, sum(entered) AS entered, sum(advanced) AS advanced,
       sum(dropped) AS dropped
FROM funnel_dropoff
WHERE as_of = (SELECT max(as_of) FROM funnel_dropoff)
GROUP BY funnel, stage_index, stage
ORDER BY funnel, stage_index
"""

ATTRIBUTION_SQL = """
SELECT model, key, removal_effect, conversions_attributed, revenue_attributed
FROM attribution
WHERE level = {level:String} AND as_of = (SELECT max(as_of) FROM attribution)
ORDER BY model, conversions_attributed DESC
"""

SEGMENTS_SQL = """
SELECT segment, size, conversion_rate, centroid
FROM segments
WHERE as_of = (SELECT max(as_of) FROM segments)
ORDER BY size DESC
"""

ALERTS_SQL = """
SELECT ts, kind, severity, segment, metric, message
FROM alerts
ORDER BY ts DESC
LIMIT 20
"""


@dataclass
class JourneyReport:
    overview: dict[str, Any] = field(default_factory=dict)
    dead_letters: list[tuple[str, int]] = field(default_factory=list)
    top_paths: list[tuple[str, int, float]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    next_steps: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    funnels: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    attribution: dict[str, list[tuple[str, float | None, float, float]]] = field(
        default_factory=dict
    )
    segments: list[tuple[str, int, float]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)


def gather(
    store: Store,
    conversion: list[str],
    *,
    n_states: int = 8,
    n_paths: int = 10,
    max_steps: int = 6,
) -> JourneyReport:
    """Query the analyst tables for everything the report shows."""
    report = JourneyReport()
    conv = ",".join(conversion)  # touchpoint names: lower snake case, never a comma
    result = run_query(store, OVERVIEW_SQL, {"conversion": conv})
    report.overview = dict(zip(result.columns, result.rows[0], strict=True)) if result.rows else {}
    report.dead_letters = [(r[0], int(r[1])) for r in run_query(store, DEAD_SQL).rows]
    paths = run_query(
        store,
        TOP_PATHS_SQL,
        {"conversion": conv, "max_steps": str(max_steps), "limit": str(n_paths)},
    )
    report.top_paths = [(r[0], int(r[1]), float(r[2])) for r in paths.rows]

    counts: dict[str, dict[str, int]] = {}
    for src, dst, n in run_query(store, TRANSITIONS_SQL).rows:
        counts.setdefault(src, {})[dst] = int(n)
    volume = {s: sum(d.values()) for s, d in counts.items()}
    report.states = sorted(volume, key=lambda s: (-volume[s], s))[:n_states]
    shown = set(report.states) | {"conversion", "null"}
    for src in report.states:
        total = volume[src]
        report.next_steps[src] = sorted(
            ((dst, n / total) for dst, n in counts[src].items()), key=lambda kv: (-kv[1], kv[0])
        )
        row = {dst: n / total for dst, n in counts[src].items() if dst in shown}
        other = 1.0 - sum(row.values())
        if other > 1e-9:
            row["(other)"] = other
        report.matrix[src] = row

    for funnel, _, stage, entered, advanced, dropped in run_query(store, FUNNEL_SQL).rows:
        report.funnels.setdefault(funnel, []).append(
            (stage, int(entered), int(advanced), int(dropped))
        )
    for model, key, effect, conversions, _revenue in run_query(
        store, ATTRIBUTION_SQL, {"level": "channel"}
    ).rows:
        report.attribution.setdefault(model, []).append(
            (key, None if effect is None else float(effect), float(conversions), float(_revenue))
        )
    report.segments = [
        (r[0], int(r[1]), float(r[2])) for r in run_query(store, SEGMENTS_SQL).rows
    ]
    report.alerts = [tuple(r) for r in run_query(store, ALERTS_SQL).rows]
    return report


# -- terminal -----------------------------------------------------------------------------------


def print_report(report: JourneyReport, console: Console) -> None:
    o = report.overview
    console.rule("[bold]journeymap: the journey map")
    if o:
        console.print(
            f"{o['events']:,} events from {o['customers']:,} customers, "
            f"{o['conversions']:,} conversions, revenue {o['revenue']:,}, "
            f"{o['first_event']} .. {o['last_event']}"
        )
    if report.dead_letters:
        console.print(
            "kept aside: "
            + ", ".join(f"{n:,} {stage}" for stage, n in report.dead_letters)
            + " (table dead_letters)"
        )

    table = Table(title="Top paths (first steps of each customer's history)")
    table.add_column("path")
    table.add_column("customers", justify="right")
    table.add_column("converted", justify="right")
    for path, n, rate in report.top_paths:
        table.add_row(path, f"{n:,}", f"{rate:.0%}")
    console.print(table)

    if report.matrix:
        # One row per touchpoint with its likeliest next steps: readable at any terminal width
        # (the full matrix is in the HTML report and the transition_matrix view).
        table = Table(title="Transition matrix: P(next | current) for the most common touchpoints")
        table.add_column("from")
        table.add_column("most likely next (probability)")
        for src in report.states:
            best = report.next_steps[src][:5]
            table.add_row(src, ", ".join(f"{dst} {p:.2f}" for dst, p in best if p >= 0.005))
        console.print(table)

    for funnel, stages in report.funnels.items():
        table = Table(title=f"Funnel {funnel}")
        for col in ("stage", "entered", "advanced", "dropped", "advance rate"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for stage, entered, advanced, dropped in stages:
            rate = f"{advanced / entered:.0%}" if entered else "-"
            table.add_row(stage, f"{entered:,}", f"{advanced:,}", f"{dropped:,}", rate)
        console.print(table)

    if report.attribution:
        table = Table(title="Attribution by channel (conversions credited)")
        models = sorted(report.attribution)
        table.add_column("channel")
        for m in models:
            table.add_column(m, justify="right")
        keys = sorted({k for rows in report.attribution.values() for k, *_ in rows})
        credit = {m: {k: c for k, _, c, _ in rows} for m, rows in report.attribution.items()}
        for key in keys:
            table.add_row(key, *[f"{credit[m].get(key, 0.0):,.1f}" for m in models])
        console.print(table)

    if report.segments:
        table = Table(title="Behavioural segments")
        for col in ("segment", "size", "conversion rate"):
            table.add_column(col, justify="left" if col == "segment" else "right")
        for seg, size, rate in report.segments:
            table.add_row(seg, f"{size:,}", f"{rate:.1%}")
        console.print(table)

    if report.alerts:
        table = Table(title="Latest alerts")
        for col in ("time", "kind", "segment", "message"):
            table.add_column(col)
        for ts, kind, _sev, seg, _metric, message in report.alerts:
            table.add_row(str(ts), kind, seg, message)
        console.print(table)
    else:
        console.print("no alerts")


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 8px;border-bottom:1px solid #eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#666;font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _bars(items: list[tuple[str, float]], unit: str = "", width: int = 520) -> str:
    if not items:
        return "<p class=note>no data</p>"
    top = max(v for _, v in items) or 1.0
    row_h = 22
    parts = [f'<svg width="{width + 260}" height="{row_h * len(items) + 4}" role="img">']
    for i, (label, value) in enumerate(items):
        y = i * row_h
        w = max(1.0, width * value / top)
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{_e(label[:32])}</text>'
            f'<rect x="220" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="#4c78a8"/>'
            f'<text x="{225 + w:.1f}" y="{y + 15}" font-size="12">{value:,.2f}{unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _heat(report: JourneyReport) -> str:
    cols = [*report.states, "conversion", "null"]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    for src in report.states:
        cells = []
        for c in cols:
            p = report.matrix[src].get(c, 0.0)
            shade = int(255 - 180 * p)
            cells.append(
                f'<td class=num style="background:rgb({shade},{shade},255)">'
                f'{p:.2f}</td>' if p else "<td class=num>.</td>"
            )
        rows.append(f"<tr><th>{_e(src)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>from \\ to</th>{head}</tr>{''.join(rows)}</table>"


def render_html(report: JourneyReport) -> str:
    o = report.overview
    sections = [f"<h1>journeymap: the journey map</h1><p>{_e(o.get('events', 0))} events, "
                f"{_e(o.get('customers', 0))} customers, {_e(o.get('conversions', 0))} "
                f"conversions, {_e(o.get('first_event', ''))} .. {_e(o.get('last_event', ''))}</p>"]
    sections.append("<h2>Top paths</h2><p class=note>The first steps of each customer's "
                    "history, most common first.</p><table><tr><th>path</th><th>customers</th>"
                    "<th>converted</th></tr>" + "".join(
                        f"<tr><td>{_e(p)}</td><td class=num>{n:,}</td>"
                        f"<td class=num>{r:.0%}</td></tr>" for p, n, r in report.top_paths)
                    + "</table>")
    sections.append("<h2>Transition matrix</h2><p class=note>P(next touchpoint | current) over "
                    "all time for the most common touchpoints; rows sum to 1 with the rest "
                    "under other touchpoints.</p>" + _heat(report))
    for funnel, stages in report.funnels.items():
        sections.append(
            f"<h2>Funnel {_e(funnel)}</h2><p class=note>Customers entering each stage; the "
            "drop is who did not reach the next stage within the conversion window.</p>"
            + _bars([(s, float(e)) for s, e, _, _ in stages])
        )
    for model, rows in sorted(report.attribution.items()):
        sections.append(
            f"<h2>Attribution: {_e(model)}</h2><p class=note>Conversions credited to each "
            "channel.</p>" + _bars([(k, c) for k, _, c, _ in rows])
        )
    if report.segments:
        sections.append("<h2>Segments</h2>" + _bars([(s, float(n)) for s, n, _ in report.segments]))
    sections.append(
        "<h2>Alerts</h2>"
        + ("<ul>" + "".join(f"<li>{_e(a[0])}: {_e(a[5])}</li>" for a in report.alerts) + "</ul>"
           if report.alerts else "<p>none</p>")
    )
    return (f"<!doctype html><html><head><meta charset=utf-8><title>journeymap report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")
