"""Small inline SVG charts for the dashboard: drawn on the server, no JavaScript library, no CDN.

Every function takes plain numbers and returns safe markup (labels are escaped here), so a
template only places the result.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
           "#9d755d", "#bab0ac", "#eeca3b")
_MUTED = "#8a8f98"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _empty(message: str = "no data for these filters") -> Markup:
    return Markup(f'<p class="empty">{_e(message)}</p>')


@dataclass(frozen=True)
class Trend:
    """A value against the same value over the previous period of the same length."""

    text: str  # e.g. "+12%", "-3.1 pp", "new", "="
    direction: str  # up, down, flat, new, none (no comparison possible)
    good: bool | None  # None: neither good nor bad

    @property
    def css(self) -> str:
        if self.good is None or self.direction in ("flat", "new", "none"):
            return "trend neutral"
        return "trend good" if self.good else "trend bad"

    @property
    def arrow(self) -> str:
        return {"up": "▲", "down": "▼", "flat": "=", "new": "●", "none": "·"}[self.direction]

    def __html__(self) -> str:
        title = "change against the previous period of the same length"
        return (f'<span class="{self.css}" title="{title}">{self.arrow} {_e(self.text)}</span>')


def trend(now: float | None, before: float | None, *, higher_is_better: bool | None = True,
          points: bool = False) -> Trend:
    """Relative change (or the difference in percentage points for rates when `points`)."""
    if now is None or before is None:
        return Trend("n/a", "none", None)
    if points:
        diff = (now - before) * 100
        if abs(diff) < 0.05:
            return Trend("0 pp", "flat", None)
        direction = "up" if diff > 0 else "down"
        good = None if higher_is_better is None else (diff > 0) == higher_is_better
        return Trend(f"{diff:+.1f} pp", direction, good)
    if before == 0:
        return Trend("new" if now else "0", "new" if now else "flat", None)
    rel = (now - before) / abs(before)
    if abs(rel) < 0.005:
        return Trend("0%", "flat", None)
    direction = "up" if rel > 0 else "down"
    good = None if higher_is_better is None else (rel > 0) == higher_is_better
    return Trend(f"{rel:+.0%}", direction, good)


def hbars(items: Sequence[tuple[str, float, str]], *, width: int = 640,
          color: str = PALETTE[0]) -> Markup:
    """Horizontal bars: (label, value, text shown after the bar)."""
    if not items:
        return _empty()
    top = max(abs(v) for _, v, _ in items) or 1.0
    row_h, label_w, bar_w = 24, 190, width - 190 - 230
    out = [f'<svg class="chart" viewBox="0 0 {width} {row_h * len(items) + 6}" '
           f'width="{width}" role="img">']
    for i, (label, value, text) in enumerate(items):
        y = i * row_h + 3
        w = max(1.0, bar_w * abs(value) / top)
        out.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label[:28])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{color}" rx="2"><title>{_e(label)}: {_e(text)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{_e(text)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def diverging(items: Sequence[tuple[str, float, str]], *, width: int = 640) -> Markup:
    """Bars left (negative, red) or right (positive, green) of a zero line."""
    if not items:
        return _empty()
    top = max(abs(v) for _, v, _ in items) or 1.0
    row_h, label_w = 24, 190
    half = (width - label_w - 20) / 2
    zero = label_w + half
    out = [f'<svg class="chart" viewBox="0 0 {width} {row_h * len(items) + 6}" '
           f'width="{width}" role="img">',
           f'<line x1="{zero}" x2="{zero}" y1="0" y2="{row_h * len(items) + 6}" '
           f'stroke="{_MUTED}"/>']
    for i, (label, value, text) in enumerate(items):
        y = i * row_h + 3
        w = max(1.0, (half - 60) * abs(value) / top)
        x = zero if value >= 0 else zero - w
        fill = "#54a24b" if value >= 0 else "#e45756"
        tx, anchor = (zero + w + 5, "start") if value >= 0 else (zero - w - 5, "end")
        out.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label[:28])}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{fill}"><title>{_e(label)}: {_e(text)}</title></rect>'
            f'<text x="{tx:.1f}" y="{y + 15}" text-anchor="{anchor}">{_e(text)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def intervals(items: Sequence[tuple[str, float, float, float, str]], *,
              width: int = 640) -> Markup:
    """Estimates with their confidence intervals around a zero line: (label, low, estimate,
    high, text). Green when the interval lies above zero, red below, grey when it straddles it."""
    if not items:
        return _empty()
    top = max(max(abs(lo), abs(hi)) for _, lo, _, hi, _ in items) or 1.0
    row_h, label_w, text_w = 26, 190, 200
    half = (width - label_w - text_w) / 2
    zero = label_w + half
    height = row_h * len(items) + 6

    def x(v: float) -> float:
        return zero + (half - 8) * v / top

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" role="img">',
           f'<line x1="{zero}" x2="{zero}" y1="0" y2="{height}" stroke="{_MUTED}"/>']
    for i, (label, lo, mid, hi, text) in enumerate(items):
        y = i * row_h + 3 + row_h / 2
        color = "#54a24b" if lo > 0 else "#e45756" if hi < 0 else _MUTED
        out.append(
            f'<text x="{label_w - 8}" y="{y + 4}" text-anchor="end">{_e(label[:28])}</text>'
            f'<g stroke="{color}" stroke-width="2"><title>{_e(label)}: {_e(text)}</title>'
            f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y}" y2="{y}"/>'
            f'<line x1="{x(lo):.1f}" x2="{x(lo):.1f}" y1="{y - 6}" y2="{y + 6}"/>'
            f'<line x1="{x(hi):.1f}" x2="{x(hi):.1f}" y1="{y - 6}" y2="{y + 6}"/></g>'
            f'<circle cx="{x(mid):.1f}" cy="{y}" r="4.5" fill="{color}"/>'
            f'<text x="{width - text_w + 8}" y="{y + 4}">{_e(text)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def grouped_bars(groups: Sequence[str], series: Sequence[str],
                 values: dict[tuple[str, str], float], *, width: int = 760,
                 fmt: str = "{:.0%}") -> Markup:
    """Vertical bars per group, one colour per series, with a legend."""
    if not groups or not series:
        return _empty()
    top = max([abs(v) for v in values.values()] + [1e-9])
    height, base, left = 260, 220, 40
    gw = (width - left - 10) / len(groups)
    bw = max(4.0, (gw - 12) / len(series))
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + 24}" width="{width}" role="img">',
           f'<line x1="{left}" x2="{width - 10}" y1="{base}" y2="{base}" stroke="{_MUTED}"/>']
    for gi, g in enumerate(groups):
        gx = left + gi * gw + 6
        for si, s in enumerate(series):
            v = values.get((g, s), 0.0)
            h = (base - 20) * abs(v) / top
            out.append(
                f'<rect x="{gx + si * bw:.1f}" y="{base - h:.1f}" width="{bw - 1:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f'<title>{_e(g)} · {_e(s)}: {_e(fmt.format(v))}</title></rect>'
            )
        out.append(f'<text x="{gx + gw / 2 - 6:.1f}" y="{base + 16}" text-anchor="middle">'
                   f'{_e(g[:14])}</text>')
    lx = left
    for si, s in enumerate(series):
        out.append(f'<rect x="{lx}" y="{height + 8}" width="10" height="10" '
                   f'fill="{PALETTE[si % len(PALETTE)]}"/><text x="{lx + 14}" '
                   f'y="{height + 17}">{_e(s)}</text>')
        lx += 24 + 7 * len(s)
    out.append("</svg>")
    return Markup("".join(out))


def flow(edges: Sequence[tuple[str, str, float, float]], positions: dict[str, float], *,
         width: int = 980) -> Markup:
    """The journey map as a flow diagram: (src, dst, n, p) edges between touchpoint nodes.

    Nodes sit in columns by their mean step number (`positions`); an edge's width follows its
    count, its label is P(dst | src). Edges that go back to an earlier column bend below.
    """
    if not edges:
        return _empty()
    nodes = sorted({s for s, *_ in edges} | {d for _, d, *_ in edges},
                   key=lambda n: (positions.get(n, 0.0), n))
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(round(positions.get(node, 0.0)), []).append(node)
    col_keys = sorted(columns)
    n_rows = max(len(v) for v in columns.values())
    col_w = (width - 140) / max(1, len(col_keys) - 1)
    row_h = 56
    height = n_rows * row_h + 40
    where: dict[str, tuple[float, float]] = {}
    for ci, key in enumerate(col_keys):
        members = columns[key]
        offset = (n_rows - len(members)) * row_h / 2
        for ri, node in enumerate(members):
            where[node] = (70 + ci * col_w, 30 + offset + ri * row_h)
    top = max(n for _, _, n, _ in edges) or 1.0
    out = [f'<svg class="chart flow" viewBox="0 0 {width} {height}" width="{width}" role="img">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
           'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
           f'<path d="M0,0L10,5L0,10z" fill="{_MUTED}"/>'
           '</marker></defs>']
    for src, dst, n, p in sorted(edges, key=lambda e: e[2]):
        (x1, y1), (x2, y2) = where[src], where[dst]
        stroke = 1.5 + 9 * n / top
        if x2 > x1:
            mid = (x1 + x2) / 2
            path = (f"M{x1 + 52:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} "
                    f"{x2 - 52:.1f},{y2:.1f}")
            lx, ly = mid, (y1 + y2) / 2 - 4
        else:  # same column or backwards: a loop under the nodes
            dip = max(y1, y2) + 34
            path = (f"M{x1:.1f},{y1 + 12:.1f} C{x1:.1f},{dip:.1f} {x2:.1f},{dip:.1f} "
                    f"{x2:.1f},{y2 + 12:.1f}")
            lx, ly = (x1 + x2) / 2, dip - 6
        out.append(
            f'<path d="{path}" fill="none" stroke="{PALETTE[0]}" stroke-opacity=".35" '
            f'stroke-width="{stroke:.1f}" marker-end="url(#arrow)">'
            f'<title>{_e(src)} → {_e(dst)}: {n:,.0f} moves, P = {p:.2f}</title></path>'
            f'<text class="edge" x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle">{p:.2f}</text>'
        )
    for node, (x, y) in where.items():
        out.append(
            f'<rect x="{x - 52:.1f}" y="{y - 12:.1f}" width="104" height="24" rx="12" '
            f'fill="#fff" stroke="{PALETTE[0]}"/><text x="{x:.1f}" y="{y + 4:.1f}" '
            f'text-anchor="middle">{_e(node[:16])}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def sankey(paths: Sequence[tuple[Sequence[str], float]], *, width: int = 980,
           height: int = 360) -> Markup:
    """A Sankey diagram of the top paths: one column per step, bands as wide as the customers."""
    if not paths:
        return _empty()
    depth = max(len(p) for p, _ in paths)
    total = sum(n for _, n in paths) or 1.0
    node_flow: dict[tuple[int, str], float] = {}
    links: dict[tuple[int, str, str], float] = {}
    for steps, n in paths:
        for i, step in enumerate(steps):
            node_flow[(i, step)] = node_flow.get((i, step), 0.0) + n
            if i + 1 < len(steps):
                key = (i, step, steps[i + 1])
                links[key] = links.get(key, 0.0) + n
    gap, node_w = 10, 12
    col_w = (width - 160) / max(1, depth - 1)
    scale = min(12.0, (height - 20 - gap * 8) / total)  # px per customer: few stay thin
    pos: dict[tuple[int, str], tuple[float, float, float]] = {}  # x, y, h
    for i in range(depth):
        y = 10.0
        for (ci, name), f in sorted(node_flow.items(), key=lambda kv: -kv[1]):
            if ci != i:
                continue
            h = max(2.0, f * scale)
            pos[(ci, name)] = (20 + i * col_w, y, h)
            y += h + gap
    height = int(max(y0 + h for _, y0, h in pos.values()) + 12)
    out_off = {k: 0.0 for k in pos}
    in_off = {k: 0.0 for k in pos}
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" role="img">']
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in
              enumerate(sorted({name for _, name in node_flow}))}
    for (i, a, b), n in sorted(links.items(), key=lambda kv: -kv[1]):
        xa, ya, _ = pos[(i, a)]
        xb, yb, _ = pos[(i + 1, b)]
        h = n * scale
        y1 = ya + out_off[(i, a)] + h / 2
        y2 = yb + in_off[(i + 1, b)] + h / 2
        out_off[(i, a)] += h
        in_off[(i + 1, b)] += h
        x1, x2 = xa + node_w, xb
        mid = (x1 + x2) / 2
        out.append(
            f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"'
            f' fill="none" stroke="{colors[a]}" stroke-opacity=".35" '
            f'stroke-width="{max(1.0, h):.1f}"><title>{_e(a)} → {_e(b)}: {n:,.0f} customers'
            f'</title></path>'
        )
    for (_, name), (x, y, h) in pos.items():
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{node_w}" height="{h:.1f}" '
            f'fill="{colors[name]}"/><text x="{x + node_w + 4:.1f}" y="{y + h / 2 + 4:.1f}">'
            f'{_e(name[:18])}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def funnel(stages: Sequence[tuple[str, int, float | None]], *, width: int = 760) -> Markup:
    """Stage bars (customers reaching each stage) with the drop to the next stage in between."""
    if not stages or not any(n for _, n, _ in stages):
        return _empty()
    top = max(n for _, n, _ in stages) or 1
    row_h, label_w = 46, 150
    bar_w = width - label_w - 110
    out = [f'<svg class="chart" viewBox="0 0 {width} {row_h * len(stages)}" width="{width}" '
           'role="img">']
    for i, (name, n, drop) in enumerate(stages):
        y = i * row_h
        w = max(1.0, bar_w * n / top)
        x = label_w + (bar_w - w) / 2
        out.append(
            f'<text x="{label_w - 8}" y="{y + 20}" text-anchor="end">{_e(name)}</text>'
            f'<rect x="{x:.1f}" y="{y + 5}" width="{w:.1f}" height="24" rx="3" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{_e(name)}: {n:,}</title></rect>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 22}">{n:,}</text>'
        )
        if drop is not None:
            out.append(f'<text class="drop" x="{label_w + bar_w / 2:.1f}" y="{y + 42}" '
                       f'text-anchor="middle">↓ drop-off {drop:.0%}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24,
              label: str = "") -> Markup:
    """A small line of values in order (e.g. one score per day), scaled to its own range; the
    last point is marked. `label` is the tooltip."""
    if not values:
        return Markup('<span class="empty">–</span>')
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    step = (width - 4) / max(1, len(values) - 1)
    pts = [(2 + i * step, height - 2 - (v - lo) / span * (height - 4))
           for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    colour = "#cf222e" if values[-1] < values[0] else PALETTE[0]
    x, y = pts[-1]
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img"><title>{_e(label)}</title>'
        f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/></svg>'
    )
