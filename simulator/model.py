"""Generate customer journeys and their delivery: pure, seeded, no I/O, no clock.

Each customer has an own `random.Random` seeded from (seed, customer index), so a customer's
journey does not depend on how many others are simulated, and the output is the same bytes for
the same seed. Behaviour (the Markov chain, gaps, texts, revenue) and noise (junk identifiers,
email spellings, duplicate and late deliveries) draw from separate generators, so changing a
fault rate does not change the journeys.

Identifiers are unique per customer by construction: each is a bijective 64/32-bit mix of the
customer index and a per-seed salt, so no two customers share one unless the model says so.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from processors.config import lateness_ms
from processors.errors import ConfigError
from simulator.catalog import (
    ABSORBING,
    ACCOUNT_TOUCHPOINTS,
    CHURN,
    CONVERSION,
    NULL,
    SEGMENTS,
    START,
    TEXT_TOUCHPOINTS,
    TOUCHPOINTS,
    Segment,
    drifted_matrix,
    segment_named,
)
from simulator.texts import SENTIMENTS, support_text
from simulator.truth import (
    CustomerTruth,
    DeliveryTruth,
    DriftTruth,
    Outcome,
    SegmentTruth,
    TrueEvent,
    Truth,
)

MIN_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
JUNK_VALUES: Final = ("undefined", "null")
MAX_STEP_GAP_MS: Final = 25 * MIN_MS  # within a session; sessions are 35+ min apart
CHURN_HAZARD_PER_NEGATIVE: Final = 0.03  # extra churn chance per step, per negative text
CHURN_HAZARD_MAX: Final = 0.3
_M64: Final = (1 << 64) - 1
_M32: Final = (1 << 32) - 1
_SEQ_BITS: Final = 28  # lines per file < 2**28

_FIRST: Final = (
    "maria", "james", "anna", "li", "mohammed", "sofia", "lukas", "emma", "noah", "olivia",
    "yuki", "carlos", "fatima", "ivan", "chloe", "arjun", "mia", "david", "elena", "omar",
)
_LAST: Final = (
    "garcia", "smith", "muller", "wang", "khan", "rossi", "novak", "kim", "silva", "dubois",
    "tanaka", "jensen", "lopez", "ivanova", "brown", "patel", "nguyen", "cohen", "berg", "costa",
)
_DOMAINS: Final = (
    "gmail.com", "outlook.com", "yahoo.com", "proton.me", "acme.io", "globex.com", "initech.com",
    "example.org", "fastmail.com", "umbrella.co",
)
_CAMPAIGNS: Final = ("spring_sale", "retargeting", "brand", "competitor", "webinar", "launch")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. Rates are per event; times are epoch milliseconds (UTC)."""

    customers: int
    seed: int = 0
    start_ms: int = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    days: float = 90
    duplicate_rate: float = 0.01  # delivered twice
    late_rate: float = 0.01  # delivered 1-10 minutes after its event time
    very_late_rate: float = 0.001  # delivered 75 min - 6 h late: past the allowed lateness
    allowed_lateness_s: float = 3600
    junk_rate: float = 0.003  # web/app ids replaced by "undefined" / "null"
    email_variant_rate: float = 0.15  # email written with other case or whitespace
    drift_segment: str | None = "self_serve_dev"
    drift_day: float | None = None  # days after start; default: half the range
    drift_conversion_factor: float = 0.2  # moves into `purchase` scaled by this from the drift
    max_events_per_customer: int = 300

    def __post_init__(self) -> None:
        if not 0 <= self.customers < 1 << 40:
            raise ConfigError(f"customers must be between 0 and 2**40, got {self.customers}")
        if not 0 <= self.seed < 1 << 24:
            raise ConfigError(f"seed must be between 0 and {(1 << 24) - 1}, got {self.seed}")
        if self.days <= 0:
            raise ConfigError(f"days must be > 0, got {self.days}")
        for name in ("duplicate_rate", "late_rate", "very_late_rate", "junk_rate",
                     "email_variant_rate", "drift_conversion_factor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.late_rate + self.very_late_rate > 1.0:
            raise ConfigError("late_rate + very_late_rate must be at most 1")
        if self.drift_segment is not None:
            try:
                segment_named(self.drift_segment)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.drift_day is not None and not 0 <= self.drift_day <= self.days:
            raise ConfigError(f"drift_day must be within 0..days ({self.days}), got "
                              f"{self.drift_day}")

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.days * DAY_MS)

    @property
    def drift_at_ms(self) -> int | None:
        if self.drift_segment is None:
            return None
        day = self.days / 2 if self.drift_day is None else self.drift_day
        return self.start_ms + int(day * DAY_MS)


@dataclass(frozen=True, slots=True)
class CustomerRun:
    """One customer's truth and its deliveries: (delivery_ms, ts_ms, event_id, line) rows."""

    truth: CustomerTruth
    rows: list[tuple[int, int, str, bytes]]
    duplicates: list[str]
    delayed: dict[str, int]


@dataclass(frozen=True, slots=True)
class Simulation:
    """The event lines in delivery order (no trailing newline) and the ground truth."""

    lines: list[bytes]
    truth: Truth


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection on 64-bit integers that looks random."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix32(x: int) -> int:
    """A bijection on 32-bit integers (lowbias32)."""
    x &= _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _base36(x: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        x, r = divmod(x, 36)
        out = digits[r] + out
        if not x:
            return out


def _uuidish(a: int, b: int) -> str:
    h = f"{a:016x}{b:016x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _cumulative(matrix: dict[str, dict[str, float]]) -> dict[str, tuple[tuple[str, ...],
                                                                           list[float]]]:
    out = {}
    for src, row in matrix.items():
        dsts = tuple(row)
        cum, total = [], 0.0
        for dst in dsts:
            total += row[dst]
            cum.append(total)
        cum = [c / total for c in cum]
        cum[-1] = 1.0  # random() < 1.0, so bisect never runs off the end
        out[src] = (dsts, cum)
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every customer shares: config, salts, cumulative matrices, segment draw."""

    cfg: SimConfig
    salts: dict[str, int]
    seg_cum: list[float]
    normal: dict[str, dict[str, tuple[tuple[str, ...], list[float]]]]
    drifted: dict[str, dict[str, tuple[tuple[str, ...], list[float]]]]
    drift_changes: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def plan_for(cfg: SimConfig) -> _Plan:
    salts = {
        kind: _mix64(cfg.seed * 0x9E3779B97F4A7C15 + i + 1)
        for i, kind in enumerate(("event", "anon", "device", "user", "crm", "email", "session"))
    }
    total, seg_cum = 0.0, []
    for seg in SEGMENTS:
        total += seg.share
        seg_cum.append(total)
    normal = {seg.name: _cumulative(seg.matrix) for seg in SEGMENTS}
    drifted: dict[str, dict[str, tuple[tuple[str, ...], list[float]]]] = {}
    changes: dict[str, dict[str, tuple[float, float]]] = {}
    if cfg.drift_segment is not None:
        before = segment_named(cfg.drift_segment).matrix
        after = drifted_matrix(before, cfg.drift_conversion_factor)
        drifted[cfg.drift_segment] = _cumulative(after)
        for src, row in after.items():
            diff = {
                dst: (before[src].get(dst, 0.0), p)
                for dst, p in row.items()
                if p != before[src].get(dst, 0.0)
            }
            if diff:
                changes[src] = diff
    return _Plan(cfg, salts, [c / total for c in seg_cum], normal, drifted, changes)


_DAYS: dict[int, str] = {}


def _rfc3339(ts_ms: int, offset: str = "Z") -> str:
    day, ms_of_day = divmod(ts_ms, DAY_MS)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    s, ms = divmod(ms_of_day, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{date}{h:02d}:{m:02d}:{s:02d}.{ms:03d}{offset}"


def _email_variant(rng: random.Random, email: str) -> str:
    local, _, domain = email.partition("@")
    kind = rng.randrange(4)
    if kind == 0:
        return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.capitalize()
    if kind == 1:
        return email.upper()
    if kind == 2:
        return f" {email}"
    return f"{email.capitalize()}  "


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, items: list[str]) -> None:
        if not items:
            return
        first = self.find(items[0])
        for other in items[1:]:
            root = self.find(other)
            if root != first:
                self.parent[root] = first

    def components(self) -> tuple[tuple[str, ...], ...]:
        groups: dict[str, list[str]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), []).append(x)
        return tuple(sorted(tuple(sorted(g)) for g in groups.values()))


def _fragments(
    used: dict[str, set[str]], links: list[list[tuple[str, str]]]
) -> tuple[tuple[str, ...], ...]:
    """Identifiers ("kind:value") grouped by the events that carry several of them together."""
    uf = _UnionFind()
    for kind, values in used.items():
        for value in values:
            uf.find(f"{kind}:{value}")
    for linked in links:
        uf.union([f"{kind}:{value}" for kind, value in linked])
    return uf.components()


def simulate_customer(plan: _Plan, index: int) -> CustomerRun:
    """One customer's whole journey, its identifiers, and how its events are delivered."""
    cfg = plan.cfg
    salts = plan.salts
    rng = random.Random((cfg.seed << 41) | (index << 1))
    noise = random.Random((cfg.seed << 41) | (index << 1) | 1)

    seg: Segment = SEGMENTS[min(bisect_right(plan.seg_cum, rng.random()), len(SEGMENTS) - 1)]
    normal = plan.normal[seg.name]
    drifted = plan.drifted.get(seg.name)
    drift_at = cfg.drift_at_ms if drifted is not None else None

    user_id = f"u_{_mix64(index ^ salts['user']):016x}"
    crm_id = f"006{_mix64(index ^ salts['crm']):016X}"
    email = (
        f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}.{_base36(_mix32(index ^ salts['email']))}"
        f"@{rng.choice(_DOMAINS)}"
    )
    n_cookies = 1 + (rng.random() < seg.extra_cookie_p) + (rng.random() < seg.extra_cookie_p / 2)
    cookies = [
        _uuidish(_mix64((index << 2 | j) ^ salts["anon"]), _mix64((index << 2 | j) + index))
        for j in range(n_cookies)
    ]
    n_devices = 1 + (rng.random() < seg.second_device_p)
    devices = [
        _uuidish(_mix64((index << 1 | j) ^ salts["device"]), _mix64(index * 7 + j)).upper()
        for j in range(n_devices)
    ]

    gauss = rng.gauss
    exp = math.exp
    step_mu = math.log(seg.step_gap_median_s * 1000)
    session_mu = math.log(seg.session_gap_median_h * HOUR_MS)
    t = cfg.start_ms + int(rng.random() * (cfg.end_ms - cfg.start_ms))
    end_ms = cfg.end_ms
    state = START
    signed_up = False
    censored = False
    n_negative = 0
    session_no = 0
    cookie = cookies[0]
    device = devices[0]
    in_app = False

    truth_events: list[TrueEvent] = []
    rows: list[tuple[int, int, str, bytes]] = []
    duplicates: list[str] = []
    delayed: dict[str, int] = {}
    used: dict[str, set[str]] = defaultdict(set)
    variants: set[str] = set()
    links: list[list[tuple[str, str]]] = []
    session_ids: dict[int, str] = {}

    def junk_or(value: str) -> str:
        return noise.choice(JUNK_VALUES) if noise.random() < cfg.junk_rate else value

    def raw_email() -> str:
        if noise.random() < cfg.email_variant_rate:
            v = _email_variant(noise, email)
            variants.add(v)
            return v
        return email

    def emit(tp: str, ts: int) -> None:
        nonlocal in_app, n_negative
        channel = TOUCHPOINTS[tp]
        if session_no not in session_ids:
            session_ids[session_no] = (
                f"s-{_mix64((index << 20 | session_no) ^ salts['session']):016x}"
            )
        if tp == "login" and in_app:
            channel = "app"
        session_id: str | None = None
        ids: dict[str, str]
        if tp in ACCOUNT_TOUCHPOINTS:
            ids = {"user_id": user_id}
        elif channel == "app":
            ids = {"device_id": junk_or(device)}
            session_id = session_ids[session_no]
            in_app = True
        elif channel in ("web", "ads", "social"):
            ids = {"anonymous_id": junk_or(cookie)}
            session_id = session_ids[session_no]
            in_app = False
        elif channel == "email":
            ids = {"email": raw_email()}
        else:  # support, sales
            ids = {"crm_id": crm_id}
            if noise.random() < seg.crm_email_p:
                ids["email"] = raw_email()
        if tp in ("signup", "login"):
            ids["user_id"] = user_id
            ids["email"] = raw_email()

        k = len(truth_events)
        event_id = f"{_mix64((index << 20 | k) ^ salts['event']):016x}"
        body: dict[str, Any] = {
            "event_id": event_id,
            "occurred_at": ts if channel in ("app", "email") else _rfc3339(
                ts, "+00:00" if tp in ACCOUNT_TOUCHPOINTS else "Z"
            ),
            "channel": channel,
            "touchpoint": tp,
            "identities": ids,
        }
        if session_id is not None:
            body["session_id"] = session_id
        sentiment: str | None = None
        revenue: float | None = None
        if tp == CONVERSION:
            revenue = round(rng.lognormvariate(math.log(seg.revenue_median), 0.5), 2)
            body["revenue"] = revenue
            plan_name = "enterprise" if revenue >= 1000 else "pro" if revenue >= 100 else "basic"
            body["properties"] = {"plan": plan_name, "currency": "USD"}
        elif tp in TEXT_TOUCHPOINTS:
            u = rng.random()
            p_neg, p_neu, _ = seg.sentiment_p
            sentiment = SENTIMENTS[0 if u < p_neg else 1 if u < p_neg + p_neu else 2]
            if sentiment == "negative":
                n_negative += 1
            body["text"] = support_text(rng, sentiment)  # type: ignore[arg-type]
        elif tp == "ad_click":
            body["properties"] = {"campaign": rng.choice(_CAMPAIGNS)}
        elif tp == "sales_call":
            body["properties"] = {"duration_min": rng.randint(15, 60)}
        truth_events.append(TrueEvent(event_id, tp, channel, ts, sentiment, revenue))

        linked = []
        for kind, value in ids.items():
            if value in JUNK_VALUES:
                continue
            canonical = value.strip().lower() if kind == "email" else value
            used[kind].add(canonical)
            linked.append((kind, canonical))
        if len(linked) > 1:
            links.append(linked)

        # orjson's result keeps a 4 KiB buffer; a compact copy is 16x smaller in memory.
        line = bytes(memoryview(orjson.dumps(body)))
        u = noise.random()
        delay = 0
        if u < cfg.very_late_rate:
            delay = noise.randint(75 * MIN_MS, 6 * HOUR_MS)
        elif u < cfg.very_late_rate + cfg.late_rate:
            delay = noise.randint(MIN_MS, 10 * MIN_MS)
        if delay:
            delayed[event_id] = delay
        rows.append((ts + delay, ts, event_id, line))
        if noise.random() < cfg.duplicate_rate:
            duplicates.append(event_id)
            rows.append((ts + delay + noise.randint(1_000, 10 * MIN_MS), ts, event_id, line))

    while len(truth_events) < cfg.max_events_per_customer:
        rows_now = drifted if drift_at is not None and t >= drift_at else normal
        if (
            n_negative
            and signed_up
            and state != START
            and rng.random() < min(CHURN_HAZARD_MAX, CHURN_HAZARD_PER_NEGATIVE * n_negative)
        ):
            nxt = CHURN
        else:
            dsts, cum = rows_now[state]  # type: ignore[index]
            nxt = dsts[bisect_right(cum, rng.random())]
        if nxt == NULL:
            break
        if state != START:
            if rng.random() < seg.session_continue_p:
                t += min(MAX_STEP_GAP_MS, max(1000, int(exp(step_mu + 0.8 * gauss()))))
            else:
                t += max(35 * MIN_MS, int(exp(session_mu + gauss())))
                session_no += 1
                in_app = False
                cookie = cookies[0] if rng.random() < 0.7 else rng.choice(cookies)
                device = devices[0] if rng.random() < 0.8 else rng.choice(devices)
        if t >= end_ms:
            censored = True
            break
        if nxt == "login" and not signed_up:
            nxt = "signup"
        elif nxt == "signup" and signed_up:
            nxt = "login"
        if nxt in ACCOUNT_TOUCHPOINTS and not signed_up:
            emit("signup", t)
            signed_up = True
            t += min(MAX_STEP_GAP_MS, max(1000, int(exp(step_mu + 0.8 * gauss()))))
        emit(nxt, t)
        if nxt == "signup":
            signed_up = True
        state = nxt
        if nxt in ABSORBING:
            break

    last = truth_events[-1].touchpoint if truth_events else None
    outcome: Outcome = (
        "conversion" if last == CONVERSION else "churn" if last == CHURN else "null"
    )
    truth = CustomerTruth(
        customer_id=f"c{index:07d}",
        segment=seg.name,
        events=tuple(truth_events),
        outcome=outcome,
        revenue=(truth_events[-1].revenue or 0.0) if outcome == "conversion" else 0.0,
        identifiers={kind: tuple(sorted(v)) for kind, v in sorted(used.items())},
        email_variants=tuple(sorted(variants)),
        fragments=_fragments(used, links),
        signed_up=signed_up,
        censored=censored,
    )
    return CustomerRun(truth, rows, duplicates, delayed)


def simulate(cfg: SimConfig, progress: Callable[[int], None] | None = None) -> Simulation:
    """Every customer, then all deliveries merged into one file order (delivery time, then
    generation order). `progress(n)` is called with the number of customers just finished."""
    plan = plan_for(cfg)
    keys: list[int] = []
    lines: list[bytes] = []
    ts_of: list[int] = []
    eid_of: list[str] = []
    customers: list[CustomerTruth] = []
    duplicates: list[str] = []
    delayed: dict[str, int] = {}
    step = 1000
    for index in range(cfg.customers):
        run = simulate_customer(plan, index)
        customers.append(run.truth)
        for delivery_ms, ts, event_id, line in run.rows:
            keys.append(delivery_ms << _SEQ_BITS | len(lines))
            lines.append(line)
            ts_of.append(ts)
            eid_of.append(event_id)
        duplicates.extend(run.duplicates)
        delayed.update(run.delayed)
        if progress is not None and (index + 1) % step == 0:
            progress(step)
    if progress is not None and cfg.customers % step:
        progress(cfg.customers % step)
    if len(lines) >= 1 << _SEQ_BITS:
        raise ConfigError(f"too many events for one file ({len(lines)}); simulate fewer customers")

    keys.sort()
    mask = (1 << _SEQ_BITS) - 1
    order = [k & mask for k in keys]
    lateness: dict[str, int] = {}
    seen: set[str] = set()
    watermark = -1
    for i in order:
        ts, eid = ts_of[i], eid_of[i]
        if eid not in seen:
            seen.add(eid)
            if ts < watermark:
                lateness[eid] = watermark - ts
        watermark = max(watermark, ts)
    allowed_ms = lateness_ms(cfg.allowed_lateness_s)
    delivery = DeliveryTruth(
        duplicates=tuple(duplicates),
        delayed=delayed,
        lateness_ms=lateness,
        beyond_allowed_lateness=tuple(e for e, late in lateness.items() if late > allowed_ms),
        allowed_lateness_ms=allowed_ms,
        n_lines=len(lines),
    )
    drift_at = cfg.drift_at_ms
    drift = None
    if cfg.drift_segment is not None and drift_at is not None:
        drift = DriftTruth(
            segment=cfg.drift_segment,
            at_ms=drift_at,
            description=(
                f"every move into {CONVERSION!r} scaled by {cfg.drift_conversion_factor}; "
                f"the freed probability goes to {NULL!r} (the journey stops)"
            ),
            changes=plan.drift_changes,
        )
    truth = Truth(
        seed=cfg.seed,
        start_ms=cfg.start_ms,
        end_ms=cfg.end_ms,
        segments={
            s.name: SegmentTruth(s.name, s.share, s.description, s.matrix, s.revenue_median,
                                 s.sentiment_p)
            for s in SEGMENTS
        },
        drift=drift,
        delivery=delivery,
        junk_values=JUNK_VALUES,
        customers=tuple(customers),
    )
    return Simulation([lines[i] for i in order], truth)
