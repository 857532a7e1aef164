"""Attribution: which touchpoints (or channels) earn the conversions, by Markov removal effect.

Input is either *paths* (label sequences with how many ended in conversion, their value, and how
many in null: the ChannelAttribution data layout) or transition *counts* between states including
``start``, ``conversion`` and ``null`` (first order ``{(src, dst): n}``, second order
``{(prev2, src, dst): n}`` as :mod:`processors.transitions` keeps them).

The Markov model of order k has one state per window of k consecutive labels (a path shorter than
k is one state), as ChannelAttribution's ``markov_model(order=k)``; repeats of the same state in a
row are one visit, which changes no absorption probability. Removing a label sends every state
that contains it to ``null``. Its removal effect is ``1 - P(conv | removed) / P(conv)``, which
equals ``P(path visits the label | conversion)``. Everything is computed exactly on the absorbing
chain with numpy, no simulation: with ``N = (I - Q)^-1`` and ``x = N r`` the probabilities of
converting, the first state of a set ``K`` a path enters is distributed as ``N[s, K] N[K, K]^-1``,
so ``P(visit K and convert) = N[s, K] N[K, K]^-1 x[K]``: one inverse for every label.

The value removal effect weights each conversion by the mean value of conversions leaving the
same last state (what ChannelAttribution simulates). Conversions and value are then shared out in
proportion to the removal effects. First-touch, last-touch and linear (each occurrence in a path
gets an equal share) come from paths only: counts do not say which path a step belonged to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from processors.events import ResolvedEvent

START: Final = "start"
CONVERSION: Final = "conversion"
NULL: Final = "null"

State = tuple[str, ...]
"""A transient state: the window of labels it stands for (START is the empty tuple)."""
_START_STATE: Final[State] = ()


@dataclass(frozen=True, slots=True)
class Path:
    """One distinct journey: its labels in order and how it ended, aggregated over customers."""

    steps: tuple[str, ...]
    n_conversions: float = 0.0
    conversion_value: float = 0.0
    n_null: float = 0.0


@dataclass(frozen=True, slots=True)
class Attribution:
    """What one model gives one label. `removal_effect` is None for the heuristic models."""

    model: str
    key: str
    removal_effect: float | None
    conversions: float
    value: float
    value_removal_effect: float | None = None

    def as_row(self, as_of_ms: int, level: str) -> dict[str, Any]:
        """The ``attribution`` table row; `level` is ``touchpoint`` or ``channel``."""
        return {
            "as_of": as_of_ms,
            "model": self.model,
            "level": level,
            "key": self.key,
            "removal_effect": self.removal_effect,
            "conversions_attributed": self.conversions,
            "revenue_attributed": self.value,
        }


@dataclass(slots=True)
class MarkovChain:
    """Transition counts between states, and the conversion value leaving each state.

    Absorbing destinations are the strings ``CONVERSION`` and ``NULL``; the source ``()`` is start.
    """

    counts: dict[tuple[State, State | str], float] = field(default_factory=dict)
    conversion_value: dict[State, float] = field(default_factory=dict)

    def add(self, src: State, dst: State | str, n: float) -> None:
        if n and src != dst:  # a self-loop changes no absorption probability
            key = (src, dst)
            self.counts[key] = self.counts.get(key, 0.0) + n

    @property
    def n_conversions(self) -> float:
        return sum(n for (_, dst), n in self.counts.items() if dst == CONVERSION)

    @property
    def total_value(self) -> float:
        return sum(self.conversion_value.values())

    def labels(self) -> list[str]:
        seen: dict[str, None] = {}
        for src, dst in self.counts:
            for state in (src, dst):
                if isinstance(state, tuple):
                    seen.update(dict.fromkeys(state))
        return list(seen)


def _windows(steps: Sequence[str], order: int) -> list[State]:
    if len(steps) <= order:
        return [tuple(steps)]
    return [tuple(steps[i:i + order]) for i in range(len(steps) - order + 1)]


def chain_from_paths(paths: Iterable[Path], order: int = 1) -> MarkovChain:
    """The order-`order` chain of the paths (each weighted by its conversions plus nulls)."""
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    chain = MarkovChain()
    for p in paths:
        weight = p.n_conversions + p.n_null
        if not p.steps or weight <= 0:
            if weight > 0:
                chain.add(_START_STATE, CONVERSION, p.n_conversions)
                chain.add(_START_STATE, NULL, p.n_null)
            continue
        prev = _START_STATE
        for state in _windows(p.steps, order):
            chain.add(prev, state, weight)
            prev = state
        chain.add(prev, CONVERSION, p.n_conversions)
        chain.add(prev, NULL, p.n_null)
        if p.n_conversions:
            chain.conversion_value[prev] = chain.conversion_value.get(prev, 0.0) + (
                p.conversion_value)
    return chain


def _state(label: str) -> State | str:
    if label == START:
        return _START_STATE
    if label in (CONVERSION, NULL):
        return label
    return (label,)


def chain_from_pairs(pairs: Mapping[tuple[str, str], float],
                     conversion_value: Mapping[str, float] | None = None) -> MarkovChain:
    """A first-order chain from ``{(src, dst): n}`` with ``start``/``conversion``/``null``.

    `conversion_value` is the total value of the conversions that left each touchpoint.
    """
    chain = MarkovChain()
    for (src, dst), n in pairs.items():
        s = _state(src)
        if isinstance(s, tuple):
            chain.add(s, _state(dst), n)
    for label, value in (conversion_value or {}).items():
        chain.conversion_value[(label,)] = float(value)
    return chain


def chain_from_triples(triples: Mapping[tuple[str, str, str], float],
                       conversion_value: Mapping[tuple[str, str], float] | None = None
                       ) -> MarkovChain:
    """A second-order chain (states are pairs) from ``{(prev2, src, dst): n}`` counts.

    The first step of a journey is ``("", "start", a)`` and carries no pair yet; then
    ``(start, a, b)`` is ``start -> (a, b)``, ``(start, a, conversion)`` a one-step journey
    ``start -> (a) -> conversion``, ``(a, b, c)`` is ``(a, b) -> (b, c)`` and ``(a, b, null)`` is
    ``(a, b) -> null``: the states of ChannelAttribution's ``order=2``.
    `conversion_value` maps the last pair (or ``("", a)`` for a one-step journey) to the value.
    """
    absorbing = (CONVERSION, NULL)
    chain = MarkovChain()
    for (prev2, src, dst), n in triples.items():
        if src == START:
            continue
        if prev2 == START:
            if dst in absorbing:
                chain.add(_START_STATE, (src,), n)
                chain.add((src,), dst, n)
            else:
                chain.add(_START_STATE, (src, dst), n)
        elif prev2:
            chain.add((prev2, src), dst if dst in absorbing else (src, dst), n)
    for (a, b), value in (conversion_value or {}).items():
        chain.conversion_value[(b,) if a in ("", START) else (a, b)] = float(value)
    return chain


@dataclass(frozen=True, slots=True)
class RemovalEffects:
    """Removal effects per label, and the chain's probability of converting from start."""

    conversion: dict[str, float]
    value: dict[str, float]
    p_conversion: float
    expected_value: float


def removal_effects(chain: MarkovChain) -> RemovalEffects:
    """Exact removal effects of every label of the chain (see the module docstring)."""
    out_total: dict[State, float] = defaultdict(float)
    succ: dict[State, list[tuple[State | str, float]]] = defaultdict(list)
    for (src, dst), n in chain.counts.items():
        out_total[src] += n
        succ[src].append((dst, n))
    # Keep the states reachable from start; the others cannot change any probability.
    index: dict[State, int] = {_START_STATE: 0}
    todo = [_START_STATE]
    while todo:
        for dst, _ in succ.get(todo.pop(), ()):
            if isinstance(dst, tuple) and dst not in index:
                index[dst] = len(index)
                todo.append(dst)
    n = len(index)
    q = np.zeros((n, n))
    r_conv = np.zeros(n)
    r_val = np.zeros(n)
    for src, i in index.items():
        total = out_total.get(src, 0.0)
        if total <= 0:
            continue  # nothing known leaves this state: it behaves as null
        for dst, c in succ[src]:
            if dst == CONVERSION:
                r_conv[i] += c / total
            elif isinstance(dst, tuple):
                q[i, index[dst]] += c / total
        n_conv = chain.counts.get((src, CONVERSION), 0.0)
        if n_conv:
            r_val[i] = r_conv[i] * chain.conversion_value.get(src, 0.0) / n_conv
    _close_traps(q, r_conv)
    fundamental = np.linalg.inv(np.eye(n) - q)
    x = fundamental @ r_conv
    y = fundamental @ r_val
    p_conv, value = float(x[0]), float(y[0])
    members: dict[str, list[int]] = defaultdict(list)
    for state, i in index.items():
        for label in dict.fromkeys(state):
            members[label].append(i)
    re_conv: dict[str, float] = {}
    re_val: dict[str, float] = {}
    for label, ks in members.items():
        first_hit = np.linalg.solve(fundamental[np.ix_(ks, ks)].T, fundamental[0, ks])
        re_conv[label] = float(first_hit @ x[ks]) / p_conv if p_conv > 0 else 0.0
        re_val[label] = float(first_hit @ y[ks]) / value if value > 0 else 0.0
    for label in chain.labels():  # labels only in unreachable states
        re_conv.setdefault(label, 0.0)
        re_val.setdefault(label, 0.0)
    return RemovalEffects(re_conv, re_val, p_conv, value)


def _close_traps(q: np.ndarray, r_conv: np.ndarray) -> None:
    """Send states that can never be absorbed (a cycle with no way out) to null, in place.

    Only counts cut out of a window can form such a trap; without it ``I - Q`` is singular.
    """
    n = len(q)
    leaves = (q.sum(axis=1) < 1.0 - 1e-12) | (r_conv > 0)
    escapes = leaves.copy()
    changed = True
    while changed:
        reach = escapes | ((q > 0) & escapes[None, :]).any(axis=1)
        changed = bool((reach != escapes).any())
        escapes = reach
    for i in range(n):
        if not escapes[i]:
            q[i, :] = 0.0


def markov_attribution(chain: MarkovChain, model: str = "markov_1",
                       total_conversions: float | None = None,
                       total_value: float | None = None) -> list[Attribution]:
    """Share conversions and value out in proportion to the removal effects, best first."""
    effects = removal_effects(chain)
    n_conv = chain.n_conversions if total_conversions is None else total_conversions
    value = chain.total_value if total_value is None else total_value
    sum_conv = sum(effects.conversion.values())
    sum_val = sum(effects.value.values())
    rows = [
        Attribution(
            model, label, effects.conversion[label],
            n_conv * effects.conversion[label] / sum_conv if sum_conv > 0 else 0.0,
            value * effects.value[label] / sum_val if sum_val > 0 else 0.0,
            effects.value[label],
        )
        for label in effects.conversion
    ]
    return sorted(rows, key=lambda a: (-a.conversions, a.key))


def heuristic_attribution(paths: Iterable[Path]) -> list[Attribution]:
    """First-touch, last-touch and linear attribution of the converting paths."""
    shares: dict[str, dict[str, list[float]]] = {
        m: defaultdict(lambda: [0.0, 0.0]) for m in ("first_touch", "last_touch", "linear")}
    labels: dict[str, None] = {}
    for p in paths:
        labels.update(dict.fromkeys(p.steps))
        if not p.steps or not p.n_conversions:
            continue
        for model, label in (("first_touch", p.steps[0]), ("last_touch", p.steps[-1])):
            acc = shares[model][label]
            acc[0] += p.n_conversions
            acc[1] += p.conversion_value
        k = len(p.steps)
        for label in p.steps:
            acc = shares["linear"][label]
            acc[0] += p.n_conversions / k
            acc[1] += p.conversion_value / k
    rows = []
    for model, by_label in shares.items():
        for label in labels:
            conv, val = by_label.get(label, (0.0, 0.0))
            rows.append(Attribution(model, label, None, conv, val))
    return rows


def attribute(paths: Sequence[Path], orders: Sequence[int] = (1, 2)) -> list[Attribution]:
    """Markov attribution of each order (models ``markov_<k>``) and the three heuristics."""
    rows: list[Attribution] = []
    for k in orders:
        rows += markov_attribution(chain_from_paths(paths, k), model=f"markov_{k}")
    return rows + heuristic_attribution(paths)


def paths_from_events(events: Iterable[ResolvedEvent], conversion: Iterable[str], now_ms: int,
                      null_horizon_s: int, by: Literal["touchpoint", "channel"] = "touchpoint",
                      churn: Iterable[str] = ()) -> list[Path]:
    """Customers' journeys as paths: each conversion ends one (its revenue is the value).

    A journey also ends in null at a churn touchpoint, or when the customer has done nothing for
    `null_horizon_s` before `now_ms`; a journey still open is left out. The conversion (or churn)
    event itself is the outcome, not a step. Per customer, events are taken in event-time order.
    """
    conv, gone = frozenset(conversion), frozenset(churn)
    horizon_ms = null_horizon_s * 1000
    per_customer: dict[str, list[ResolvedEvent]] = defaultdict(list)
    for ev in events:
        per_customer[ev.customer_id].append(ev)
    acc: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for evs in per_customer.values():
        evs.sort(key=lambda e: e.ts_ms)
        steps: list[str] = []
        for ev in evs:
            tp = ev.event.touchpoint
            if tp in conv:
                a = acc[tuple(steps)]
                a[0] += 1
                a[1] += ev.event.revenue or 0.0
                steps = []
            elif tp in gone:
                acc[tuple(steps)][2] += 1
                steps = []
            else:
                steps.append(tp if by == "touchpoint" else ev.event.channel)
        if steps and now_ms - evs[-1].ts_ms >= horizon_ms:
            acc[tuple(steps)][2] += 1
    return [Path(steps, c, v, n) for steps, (c, v, n) in acc.items() if steps]


def _outcome_slots() -> list[float]:
    """[conversions, conversion value, nulls] of one path (module level: it must pickle)."""
    return [0.0, 0.0, 0.0]


class PathAccumulator:
    """Journeys as attribution paths, built incrementally from events in event-time order.

    The same journey boundaries as :mod:`processors.journeys`: a conversion touchpoint ends a
    path as converted (its revenue is the value), a churn touchpoint ends it in null, and so
    does a gap of `null_horizon_s` without events. The outcome event itself is not a step.
    Each path is kept at two levels at once: touchpoints and channels.
    """

    def __init__(self, conversion: Iterable[str], churn: Iterable[str], null_horizon_s: int
                 ) -> None:
        self.conversion = frozenset(conversion)
        self.churn = frozenset(churn)
        self.horizon_ms = null_horizon_s * 1000
        # customer -> (last event time, touchpoints so far, channels so far)
        self.open: dict[str, tuple[int, list[str], list[str]]] = {}
        self.done: dict[str, dict[tuple[str, ...], list[float]]] = {
            "touchpoint": defaultdict(_outcome_slots),
            "channel": defaultdict(_outcome_slots),
        }

    def _close(self, tps: list[str], chs: list[str], slot: int, value: float = 0.0) -> None:
        if not tps:
            return
        for level, steps in (("touchpoint", tps), ("channel", chs)):
            acc = self.done[level][tuple(steps)]
            acc[slot] += 1
            if slot == 0:
                acc[1] += value

    def add(self, events: Iterable[ResolvedEvent]) -> None:
        """Add events; per customer they must come in event-time order."""
        open_paths = self.open
        last_of = open_paths.get
        conversion, churn, horizon_ms = self.conversion, self.churn, self.horizon_ms
        close = self._close
        for ev in events:
            cid, ts, te = ev.customer_id, ev.ts_ms, ev.event
            tp = te.touchpoint
            last = last_of(cid)
            if last is None:
                tps, chs = [], []
            elif ts - last[0] >= horizon_ms:
                close(last[1], last[2], 2)
                tps, chs = [], []
            else:
                _, tps, chs = last
            if tp in conversion:
                close(tps, chs, 0, te.revenue or 0.0)
                tps, chs = [], []
            elif tp in churn:
                close(tps, chs, 2)
                tps, chs = [], []
            else:
                tps.append(tp)
                chs.append(te.channel)
            open_paths[cid] = (ts, tps, chs)

    def rename(self, loser: str, winner: str) -> None:
        """A merge: the loser's open journey continues as the winner's (the longer one wins)."""
        lost = self.open.pop(loser, None)
        if lost is not None and (winner not in self.open or lost[0] > self.open[winner][0]):
            self.open[winner] = lost

    def paths(self, level: Literal["touchpoint", "channel"], now_ms: int) -> list[Path]:
        """Finished paths, plus open journeys idle for the null horizon at `now_ms` (as null)."""
        acc: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for steps, (c, v, n) in self.done[level].items():
            acc[steps] = [c, v, n]
        index = 1 if level == "touchpoint" else 2
        for last_ts, *parts in self.open.values():
            steps_list = parts[index - 1]
            if steps_list and now_ms - last_ts >= self.horizon_ms:
                acc[tuple(steps_list)][2] += 1
        return [Path(steps, c, v, n) for steps, (c, v, n) in acc.items() if steps]
