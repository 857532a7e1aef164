"""The simulator: every line honours the contract, and the truth really describes the file.

Runs in memory (no files, no network). Statistical checks use a few thousand customers and
margins far from the observed values, so they do not flake but do fail if a mechanism breaks.
"""

from __future__ import annotations

import tomllib
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean

import orjson
import pytest

from processors.validation import Accepted, decode
from simulator.catalog import ABSORBING, NULL, SEGMENT_NAMES, SEGMENTS, START, TOUCHPOINTS
from simulator.model import (
    DAY_MS,
    MIN_MS,
    SimConfig,
    Simulation,
    plan_for,
    simulate,
    simulate_customer,
)
from simulator.truth import Truth, parse_truth, truth_path_for
from streams.producer import RateLimiter, event_key, key_of

N_CUSTOMERS = 3000


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(SimConfig(customers=N_CUSTOMERS, seed=11))


@pytest.fixture(scope="module")
def truth(sim: Simulation) -> Truth:
    return sim.truth


@pytest.fixture(scope="module")
def decoded(sim: Simulation) -> list[Accepted]:
    out = []
    for line in sim.lines:
        result = decode(line)
        assert isinstance(result, Accepted), (result, line)
        out.append(result)
    return out


# --- the contract and the file -------------------------------------------------------------


def test_every_line_is_an_accepted_event(decoded: list[Accepted], sim: Simulation) -> None:
    assert len(decoded) == len(sim.lines) > 8 * N_CUSTOMERS


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = simulate(SimConfig(customers=150, seed=5))
    b = simulate(SimConfig(customers=150, seed=5))
    c = simulate(SimConfig(customers=150, seed=6))
    assert a.lines == b.lines
    assert list(a.truth.to_jsonl()) == list(b.truth.to_jsonl())
    assert a.lines != c.lines


def test_a_customer_does_not_depend_on_how_many_are_simulated() -> None:
    small = simulate(SimConfig(customers=40, seed=9))
    large = simulate(SimConfig(customers=120, seed=9))
    assert small.truth.customers == large.truth.customers[:40]


def test_fault_rates_do_not_change_the_journeys() -> None:
    plain = simulate(SimConfig(customers=60, seed=2, duplicate_rate=0, late_rate=0,
                               very_late_rate=0))
    faulty = simulate(SimConfig(customers=60, seed=2, duplicate_rate=0.3, late_rate=0.3))
    assert [c.events for c in plain.truth.customers] == [
        c.events for c in faulty.truth.customers
    ]
    assert not plain.truth.delivery.duplicates and not plain.truth.delivery.lateness_ms
    assert len(plain.lines) == plain.truth.n_events


def test_file_holds_each_true_event_once_plus_the_duplicates(
    truth: Truth, decoded: list[Accepted]
) -> None:
    in_file = Counter(a.event.event_id for a in decoded)
    true_ids = [e.event_id for _, e in truth.events()]
    assert len(set(true_ids)) == len(true_ids)
    assert set(in_file) == set(true_ids)
    twice = {eid for eid, n in in_file.items() if n == 2}
    assert twice == set(truth.delivery.duplicates)
    assert max(in_file.values()) == 2
    assert 0.005 < len(twice) / len(true_ids) < 0.015  # default 1 %


def test_duplicates_are_the_same_bytes(sim: Simulation, truth: Truth) -> None:
    by_id: dict[str, set[bytes]] = defaultdict(set)
    dups = set(truth.delivery.duplicates)
    for line in sim.lines:
        eid = orjson.loads(line)["event_id"]
        if eid in dups:
            by_id[eid].add(line)
    assert by_id and all(len(v) == 1 for v in by_id.values())


def test_true_events_match_the_file(truth: Truth, decoded: list[Accepted]) -> None:
    events = {a.event.event_id: a.event for a in decoded}
    for _, e in truth.events():
        ev = events[e.event_id]
        assert (ev.touchpoint, ev.channel, ev.ts_ms) == (e.touchpoint, e.channel, e.ts_ms)
        assert ev.revenue == e.revenue
        assert (ev.text is not None) == (e.sentiment is not None)
    for c in truth.customers:
        ts = [e.ts_ms for e in c.events]
        assert ts == sorted(ts) and len(set(ts)) == len(ts), c.customer_id
        assert all(truth.start_ms <= t < truth.end_ms for t in ts)


def test_lateness_in_truth_is_what_the_file_order_does(
    truth: Truth, decoded: list[Accepted]
) -> None:
    seen: set[str] = set()
    watermark = -1
    lateness = {}
    for a in decoded:
        ev = a.event
        if ev.event_id not in seen:
            seen.add(ev.event_id)
            if ev.ts_ms < watermark:
                lateness[ev.event_id] = watermark - ev.ts_ms
        watermark = max(watermark, ev.ts_ms)
    d = truth.delivery
    assert lateness == d.lateness_ms
    assert set(d.beyond_allowed_lateness) == {
        e for e, late in lateness.items() if late > d.allowed_lateness_ms
    }
    assert d.beyond_allowed_lateness, "some events must arrive past the allowed lateness"
    assert all(MIN_MS <= v <= 10 * MIN_MS or 75 * MIN_MS <= v <= 360 * MIN_MS
               for v in d.delayed.values())
    # every event past the allowed lateness was one we held back on purpose
    assert set(d.beyond_allowed_lateness) <= set(d.delayed)
    assert len(lateness) < 0.03 * len(seen)


# --- journeys ---------------------------------------------------------------------------------


def test_funnel_touchpoints_of_the_default_config_all_occur(truth: Truth) -> None:
    config = tomllib.loads(Path(__file__).parents[2].joinpath("journeymap.toml").read_text())
    wanted = {tp for f in config["funnels"] for s in f["stages"] for tp in s["touchpoints"]}
    wanted |= set(config["outcomes"]["conversion"]) | set(config["outcomes"]["churn"])
    occurring = {e.touchpoint for _, e in truth.events()}
    assert wanted <= set(TOUCHPOINTS)
    assert wanted <= occurring


def test_outcomes_are_absorbing_and_consistent(truth: Truth) -> None:
    outcomes = Counter(c.outcome for c in truth.customers)
    assert all(outcomes[o] > 0.03 * N_CUSTOMERS for o in ("conversion", "churn", "null"))
    for c in truth.customers:
        tps = c.touchpoints
        assert not any(tp in ABSORBING for tp in tps[:-1]), c.customer_id
        if c.outcome == "conversion":
            assert tps[-1] == "purchase" and c.revenue == c.events[-1].revenue > 0
        elif c.outcome == "churn":
            assert tps[-1] == "subscription_cancelled" and c.revenue == 0
        else:
            assert tps[-1:] != ["purchase"] and tps[-1:] != ["subscription_cancelled"]
        # account events need an account: a signup comes first
        for i, tp in enumerate(tps):
            if tp in ("trial_start", "purchase", "subscription_cancelled", "login"):
                assert "signup" in tps[:i], (c.customer_id, tps)
        assert tps.count("signup") <= 1


def test_sessions_are_minutes_apart_and_sessions_hours_apart(truth: Truth) -> None:
    gaps = [
        b.ts_ms - a.ts_ms
        for c in truth.customers
        for a, b in zip(c.events, c.events[1:], strict=False)
    ]
    short = [g for g in gaps if g < 30 * MIN_MS]
    long = [g for g in gaps if g >= 35 * MIN_MS]
    assert len(short) + len(long) == len(gaps)  # nothing in the 30-35 min no man's land
    assert 0.4 < len(short) / len(gaps) < 0.9
    assert sorted(short)[len(short) // 2] < 5 * MIN_MS
    assert sorted(long)[len(long) // 2] > 6 * 60 * MIN_MS


def test_journeys_are_spread_over_the_range(truth: Truth) -> None:
    days = Counter((e.ts_ms - truth.start_ms) // DAY_MS for _, e in truth.events())
    assert len(days) == 90
    weekly = [sum(days[d] for d in range(w * 7, w * 7 + 7)) for w in range(12)]
    assert min(weekly) > 0.3 * max(weekly)


def test_segments_differ_in_behaviour(truth: Truth) -> None:
    by_seg: dict[str, list] = defaultdict(list)
    for c in truth.customers:
        by_seg[c.segment].append(c)
    assert set(by_seg) == set(SEGMENT_NAMES)
    for seg in SEGMENTS:  # shares within a few points of the configured ones
        assert abs(len(by_seg[seg.name]) / N_CUSTOMERS - seg.share) < 0.04

    def share(seg: str, channels: set[str]) -> float:
        events = [e for c in by_seg[seg] for e in c.events]
        return sum(e.channel in channels for e in events) / len(events)

    def revenue(seg: str) -> float:
        values = sorted(c.revenue for c in by_seg[seg] if c.revenue)
        return values[len(values) // 2]

    assert revenue("enterprise_evaluator") > 10 * revenue("self_serve_dev")
    assert revenue("self_serve_dev") > 2 * revenue("bargain_hunter")
    most = {
        "support_heavy": {"support"},
        "enterprise_evaluator": {"sales"},
        "self_serve_dev": {"app"},
        "bargain_hunter": {"ads", "email"},
        "window_shopper": {"social"},
    }
    for seg, channels in most.items():
        mine = share(seg, channels)
        assert all(mine > share(other, channels) for other in SEGMENT_NAMES if other != seg), seg
    n_events = {s: mean(len(c.events) for c in cs) for s, cs in by_seg.items()}
    assert n_events["self_serve_dev"] > 2 * n_events["window_shopper"]


def test_sentiment_labels_and_churn(truth: Truth, decoded: list[Accepted]) -> None:
    texts = {a.event.event_id: a.event.text for a in decoded if a.event.text}
    labelled = [(c, e) for c, e in truth.events() if e.sentiment]
    assert len(labelled) > 1000 and all(e.event_id in texts for _, e in labelled)
    assert len({texts[e.event_id] for _, e in labelled}) > 0.5 * len(labelled)  # varied
    neg = Counter(c.segment for c, e in labelled if e.sentiment == "negative")
    total = Counter(c.segment for c, _ in labelled)
    rate = {s: neg[s] / total[s] for s in total}
    assert rate["support_heavy"] == max(rate.values()) > 0.45
    # Negative texts raise churn. Within one segment, among signed-up customers who wrote
    # something and did not convert, those with a negative text churn far more often (without
    # the hazard both groups churn alike: about 18 % here).
    wrote = [
        c
        for c in truth.customers
        if c.segment == "self_serve_dev" and c.signed_up and c.outcome != "conversion"
        and any(e.sentiment for e in c.events)
    ]
    with_neg = [c for c in wrote if any(e.sentiment == "negative" for e in c.events)]
    without = [c for c in wrote if c not in with_neg]
    churn = lambda cs: sum(c.outcome == "churn" for c in cs) / len(cs)  # noqa: E731
    assert len(with_neg) > 30 and len(without) > 30
    assert churn(with_neg) > 1.8 * churn(without)


def test_drift_lowers_conversion_of_one_segment_from_its_time(truth: Truth) -> None:
    drift = truth.drift
    assert drift is not None and drift.segment == "self_serve_dev"
    assert drift.at_ms == truth.start_ms + 45 * DAY_MS
    for src, row in drift.changes.items():
        before, after = row["purchase"]
        assert after == pytest.approx(before * 0.2), src
        assert row[NULL][1] > row[NULL][0]

    def conversion_share(segment: str, after: bool) -> float:
        steps = [
            b.touchpoint == "purchase"
            for c in truth.customers
            if c.segment == segment
            for a, b in zip(c.events, c.events[1:], strict=False)
            if (b.ts_ms >= drift.at_ms) == after
        ]
        return sum(steps) / len(steps)

    assert conversion_share("self_serve_dev", True) < 0.5 * conversion_share(
        "self_serve_dev", False
    )
    other = "bargain_hunter"
    assert conversion_share(other, True) > 0.7 * conversion_share(other, False)


def test_matrices_are_distributions_over_known_states(truth: Truth) -> None:
    for seg in truth.segments.values():
        assert set(seg.matrix) == {START} | (set(TOUCHPOINTS) - ABSORBING)
        for src, row in seg.matrix.items():
            assert sum(row.values()) == pytest.approx(1.0), (seg.name, src)
            assert set(row) <= set(TOUCHPOINTS) | {NULL}


# --- identities -------------------------------------------------------------------------------


def test_identifiers_belong_to_one_customer_each(truth: Truth) -> None:
    owner: dict[str, str] = {}
    for c in truth.customers:
        for kind, values in c.identifiers.items():
            for v in values:
                key = f"{kind}:{v}"
                assert owner.setdefault(key, c.customer_id) == c.customer_id, key
        members = {m for f in c.fragments for m in f}
        assert members == {f"{k}:{v}" for k, vs in c.identifiers.items() for v in vs}
        assert not set(truth.junk_values) & {v for vs in c.identifiers.values() for v in vs}


def test_identity_fragmentation_like_real_data(
    truth: Truth, decoded: list[Accepted]
) -> None:
    cust = truth.customer_of_event()
    kinds_by_tp: dict[str, Counter] = defaultdict(Counter)
    junk = 0
    variants = 0
    for a in decoded:
        ev = a.event
        ids = dict(ev.identities.items())
        kinds_by_tp[ev.touchpoint][tuple(sorted(ids))] += 1
        junk += any(v in truth.junk_values for v in ids.values())
        email = ids.get("email")
        if email is not None and email != email.strip().lower():
            variants += 1
            canonical = truth.customer(cust[ev.event_id]).identifiers["email"]
            assert email.strip().lower() in canonical
    for tp in ("signup", "login"):
        for kinds in kinds_by_tp[tp]:
            assert {"user_id", "email"} <= set(kinds)
            assert "anonymous_id" in kinds or "device_id" in kinds
    assert set(kinds_by_tp["email_open"]) == {("email",)}
    assert set(kinds_by_tp["landing_page"]) == {("anonymous_id",)}
    assert set(kinds_by_tp["feature_use"]) == {("device_id",)}
    assert set(kinds_by_tp["purchase"]) == {("user_id",)}
    assert {("crm_id",), ("crm_id", "email")} == set(kinds_by_tp["sales_call"])
    assert 0 < junk < 0.01 * len(decoded)
    assert variants > 0
    never = [c for c in truth.customers if not c.signed_up]
    assert never and mean(len(c.fragments) for c in never) > 1.0
    assert any(len(c.identifiers.get("anonymous_id", ())) > 1 for c in truth.customers)
    assert any(len(c.identifiers.get("device_id", ())) > 1 for c in truth.customers)


# --- the truth file format --------------------------------------------------------------------


def test_truth_round_trips_through_its_lines(truth: Truth) -> None:
    again = parse_truth(list(truth.to_jsonl()))
    assert again == truth
    assert again.customer_of_event() == truth.customer_of_event()


def test_truth_path_sits_beside_the_events() -> None:
    assert truth_path_for("data/ev.jsonl") == Path("data/ev.truth.jsonl")
    assert truth_path_for("ev.jsonl.gz") == Path("ev.truth.jsonl.gz")
    assert truth_path_for("events") == Path("events.truth.jsonl")


def test_bad_configs_are_refused_with_the_field_named() -> None:
    from processors.errors import ConfigError

    with pytest.raises(ConfigError, match="duplicate_rate"):
        SimConfig(customers=1, duplicate_rate=2)
    with pytest.raises(ConfigError, match="unknown segment"):
        SimConfig(customers=1, drift_segment="nobody")


def test_a_single_customer_is_plain_data() -> None:
    run = simulate_customer(plan_for(SimConfig(customers=1, seed=3)), 0)
    assert run.truth.customer_id == "c0000000"
    assert all(isinstance(line, bytes) for *_, line in run.rows)


# --- producer helpers (pure) --------------------------------------------------------------------


def test_event_key_prefers_the_most_stable_identifier() -> None:
    assert event_key({"anonymous_id": "a", "user_id": "u"}) == b"u"
    assert event_key({"anonymous_id": "a", "email": " X@Y.com ", "crm_id": "c"}) == b"c"
    assert event_key({"anonymous_id": "a", "email": " X@Y.com "}) == b"x@y.com"
    assert event_key({"anonymous_id": "undefined", "device_id": "d"}) == b"d"
    assert event_key({"anonymous_id": "null"}) is None
    assert key_of(b'{"identities": {"device_id": "d", "anonymous_id": "a"}}') == b"d"
    assert key_of(b"not json") is None
    assert key_of(b"[1, 2]") is None


def test_rate_limiter_holds_the_average_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(100.0, burst=10, clock=lambda: now[0], sleep=sleep)
    for _ in range(1010):
        limiter.acquire()
    # 10 tokens of burst, then 1000 events at 100/s take 10 s
    assert now[0] == pytest.approx(10.0, rel=1e-6)
    assert max(slept) <= 0.01 + 1e-9
