"""Journey state: hand-drawn timelines for sessions, outcomes, lateness, dedup and merges."""

from __future__ import annotations

import pickle
import random
from collections import Counter

from processors.config import JourneyConfig, OutcomesConfig, ProcessingConfig
from processors.events import ResolvedEvent
from processors.journeys import (
    CONVERSION,
    NULL,
    START,
    JourneyProcessor,
    Step,
)
from tests.factories import DAY_MS, MIN_MS, T0_MS, event, resolved

CONFIG = ProcessingConfig(
    outcomes=OutcomesConfig(conversion=["purchase"], churn=["cancel"], null_horizon_s=86_400),
    journey=JourneyConfig(session_gap_s=30 * 60, allowed_lateness_s=15 * 60,
                          last_touchpoints_kept=4, dedup_ids_per_customer=8),
)


def at(minute: float) -> int:
    return T0_MS + int(minute * MIN_MS)


def ev(tp: str, minute: float, cid: str = "c1", **kw: object) -> ResolvedEvent:
    return resolved(cid, tp, at(minute), **kw)


def net(steps: list[Step]) -> Counter[Step]:
    """The steps that remain once retractions cancel the steps they retract."""
    out: Counter[Step] = Counter()
    for st in steps:
        out[st._replace(sign=1)] += st.sign
    assert all(n >= 0 for n in out.values()), "a retraction without its step"
    return +out


def path(steps: list[Step]) -> list[tuple[str, str]]:
    return [(s.src, s.dst) for s in sorted(net(steps), key=lambda s: (s.ts_ms, s.dst == NULL))]


def test_path_starts_at_start_converts_and_restarts() -> None:
    #  minute:  0        1        2         3          4
    #  c1:      landing  pricing  purchase  landing    cancel
    #  state:   start->landing->pricing->conversion | start->landing->null
    p = JourneyProcessor(CONFIG)
    out = p.apply([ev("landing", 0), ev("pricing", 1), ev("purchase", 2), ev("landing", 3),
                   ev("cancel", 4)])
    assert [(s.src, s.dst, s.prev2, s.journey_no) for s in out.steps] == [
        (START, "landing", "", 1),
        ("landing", "pricing", START, 1),
        ("pricing", CONVERSION, "landing", 1),
        (START, "landing", "", 2),
        ("landing", NULL, START, 2),
    ]
    assert [s.gap_ms for s in out.steps] == [0, MIN_MS, MIN_MS, 0, MIN_MS]
    snap = p.snapshot("c1")
    assert snap is not None
    assert (snap.n_events, snap.n_conversions, snap.n_churns, snap.journey_no) == (5, 1, 1, 2)
    assert snap.markov_state == NULL and not snap.journey_open
    assert [tp for _, tp, _ in snap.last_touchpoints] == ["pricing", "purchase", "landing",
                                                          "cancel"]  # the last 4 kept


def test_sessions_split_on_inactivity_gap() -> None:
    #  minute:   0    10   40   41        100
    #  c1:       a    b    c    d          e
    #  session:  |--s1--|  |--s2--|        |s3|     (gap 30 min: 10->40 is exactly 30, same)
    p = JourneyProcessor(CONFIG)
    out = p.apply([ev("a", 0), ev("b", 10), ev("c", 40), ev("d", 41), ev("e", 100)])
    assert [s.is_new_session for s in out.steps] == [True, False, False, False, True]
    assert len({s.session_id for s in out.steps}) == 2
    out = p.apply([ev("f", 131)])  # 31 minutes after e
    assert out.steps[0].is_new_session
    snap = p.snapshot("c1")
    assert snap is not None and snap.n_sessions == 3
    assert snap.session_start_ms == at(131) and snap.since_previous_ms == 31 * MIN_MS


def test_producer_session_id_wins() -> None:
    #  minute:   0      1      200     201
    #  sid:      A      B      B       -        (no sid: inherits B, 1 minute later)
    p = JourneyProcessor(CONFIG)
    out = p.apply([ev("a", 0, session_id="A"), ev("b", 1, session_id="B"),
                   ev("c", 200, session_id="B"), ev("d", 201)])
    assert [(s.session_id, s.is_new_session) for s in out.steps] == [
        ("A", True), ("B", True), ("B", False), ("B", False)]


def test_null_horizon_by_expire_and_by_next_event_agree() -> None:
    #  day:   0      0+1min            1+1min (horizon 1 day)      3
    #  c1:    a      b                 -> null                      c (new journey)
    events = [ev("a", 0), ev("b", 1), ev("c", 3 * 24 * 60)]
    by_expire = JourneyProcessor(CONFIG)
    steps = by_expire.apply(events[:2]).steps
    lateness = 15 * MIN_MS
    assert by_expire.expire(at(1) + DAY_MS + lateness - 1).steps == []  # not behind frontier yet
    expired = by_expire.expire(at(1) + DAY_MS + lateness).steps
    assert [(s.src, s.dst, s.ts_ms, s.touchpoint) for s in expired] == [
        ("b", NULL, at(1) + DAY_MS, "")]
    steps += expired + by_expire.apply(events[2:]).steps
    implicit = JourneyProcessor(CONFIG).apply(events).steps
    assert net(steps) == net(implicit)
    assert path(implicit) == [(START, "a"), ("a", "b"), ("b", NULL), (START, "c")]
    snap = by_expire.snapshot("c1")
    assert snap is not None and snap.n_expired == 1 and snap.journey_no == 2
    # Each step names the event the customer moved to; an expiry has none.
    assert [s.event_id for s in implicit] == [events[0].event.event_id,
                                              events[1].event.event_id, "",
                                              events[2].event.event_id]


def test_duplicates_count_once_and_the_dedup_ring_is_bounded() -> None:
    p = JourneyProcessor(CONFIG)
    first = event("a", at_ms=at(0), event_id="dup")
    out = p.apply([ResolvedEvent("c1", first), ResolvedEvent("c1", first)])
    assert len(out.steps) == 1 and out.duplicates == [ResolvedEvent("c1", first)]
    # 8 ids kept (8 bytes each): the 9th newer id pushes "dup" out of the ring.
    p.apply([ev("x", 1 + i) for i in range(8)])
    assert len(p.customers["c1"].seen) == 8 * 8
    assert len(p.apply([ResolvedEvent("c1", first)]).duplicates) == 0


def test_late_events_are_returned_not_applied() -> None:
    #  minute:     0    10   30   | 14 arrives after 30: frontier = 30 - 15 = 15 -> late
    #  watermark:  0    10   30
    p = JourneyProcessor(CONFIG)
    out = p.apply([ev("a", 0), ev("b", 10), ev("c", 30), ev("late", 14), ev("ok", 15)])
    assert [x.event.event.touchpoint for x in out.late] == ["late"]
    assert out.late[0].frontier_ms == at(15) and out.late[0].watermark_ms == at(30)
    assert path(out.steps) == [(START, "a"), ("a", "b"), ("b", "ok"), ("ok", "c")]
    # A late event of an unknown customer creates no state.
    assert len(p.apply([ev("z", 0, cid="other")]).late) == 1 and "other" not in p.customers


def test_out_of_order_within_lateness_equals_in_order() -> None:
    #  minute:   0    30       40            (gap 30: in order it is one session a b c)
    #  arrival:  a    c(40)    b(30)         c alone would open session 2; b joins them
    #  frontier when b arrives: 40 - 15 = 25 <= 30, so b is within the lateness
    in_order = [ev("a", 0), ev("b", 30), ev("c", 40)]
    shuffled = [in_order[0], in_order[2], in_order[1]]
    p, q = JourneyProcessor(CONFIG), JourneyProcessor(CONFIG)
    out_p = p.apply(in_order)
    out_q = q.apply(shuffled)
    assert any(s.sign == -1 for s in out_q.steps)  # it was corrected, not buffered
    assert net(out_q.steps) == net(out_p.steps)
    assert p.snapshot("c1") == q.snapshot("c1")
    snap = q.snapshot("c1")
    assert snap is not None and snap.n_sessions == 1


def test_insertion_before_a_conversion_moves_the_outcome() -> None:
    #  minute:   0    5          10            arrival: a, purchase, b
    #  in order: start->a->b->conversion
    p = JourneyProcessor(CONFIG)
    out = p.apply([ev("a", 0), ev("purchase", 10), ev("b", 5)])
    assert path(out.steps) == [(START, "a"), ("a", "b"), ("b", CONVERSION)]
    seconds = {(s.prev2, s.src, s.dst) for s in net(out.steps)}
    assert seconds == {("", START, "a"), (START, "a", "b"), ("a", "b", CONVERSION)}


def test_merge_recombines_in_event_time_order() -> None:
    #  minute:   0    10   20   30
    #  winner:   a         c
    #  loser:         b         d
    #  merged:   start->a->b->c->d   (as if one customer all along)
    p = JourneyProcessor(CONFIG)
    before = p.apply([ev("a", 0, "w", event_id="a"), ev("b", 10, "l", event_id="b"),
                      ev("c", 20, "w", event_id="c"), ev("d", 30, "l", event_id="d")])
    fix = p.merge("l", "w")
    assert "l" not in p.customers
    merged = net(before.steps + fix.steps)
    as_one = [ev("a", 0, "w", event_id="a"), ev("b", 10, "w", event_id="b"),
              ev("c", 20, "w", event_id="c"), ev("d", 30, "w", event_id="d")]
    direct = JourneyProcessor(CONFIG).apply(as_one)
    assert merged == net(direct.steps)
    fresh = JourneyProcessor(CONFIG)
    fresh.apply(as_one)
    assert p.snapshot("w") == fresh.snapshot("w")
    assert p.merge("l", "w").steps == []  # idempotent: the loser is gone


def test_state_is_small_when_pickled() -> None:
    """Average pickled state per customer on a realistic mix stays under 1 KB."""
    rng = random.Random(4)
    tps = ["landing_page", "pricing_page", "blog_post", "signup", "email_open", "purchase"]
    p = JourneyProcessor(ProcessingConfig())  # defaults: 10 touchpoints, 64 dedup ids
    events = []
    for c in range(500):
        t = T0_MS
        for _ in range(rng.randint(1, 40)):
            t += rng.randint(1, 3 * 3600) * 1000
            events.append(resolved(f"customer-{c:06d}", rng.choice(tps), t,
                                   channel=rng.choice(["web", "email", "app"]),
                                   event_id=f"{rng.getrandbits(128):032x}"))
    events.sort(key=lambda e: e.ts_ms)
    p.apply(events)
    p.expire(events[-1].ts_ms + 40 * DAY_MS)
    sizes = [len(pickle.dumps(s)) for s in p.customers.values()]
    assert sum(sizes) / len(sizes) <= 1024, sum(sizes) / len(sizes)


def test_pickled_state_restores_and_continues_the_same() -> None:
    """A restored state (as a worker reloads its table) gives the same snapshot and steps."""
    rng = random.Random(9)
    events = [ev(rng.choice(["a", "b", "purchase"]), i * 7, cid=f"c{i % 3}",
                 channel=rng.choice(["web", "email"])) for i in range(30)]
    p = JourneyProcessor(CONFIG)
    p.apply(events[:20])
    q = JourneyProcessor(CONFIG)
    q.customers = pickle.loads(pickle.dumps(p.customers))
    q.watermark_ms = p.watermark_ms
    q.reindex()
    assert all(q.snapshot(c) == p.snapshot(c) for c in p.customers)
    assert q.apply(events[20:]).steps == p.apply(events[20:]).steps
    end = events[-1].ts_ms + 2 * DAY_MS
    assert q.expire(end).steps == p.expire(end).steps


def test_journeys_due_in_one_hour_end_in_customer_id_order_in_both_engines() -> None:
    """Customers whose journeys fall due in the same deadline hour end in id order (not in a
    set's order, which PYTHONHASHSEED moves), the native processor as the Python one, and a
    customer detached and attached again is in the deadline index once."""
    from processors.journeys_native import NATIVE_AVAILABLE, NativeJourneyProcessor

    engines = [JourneyProcessor(CONFIG)]
    if NATIVE_AVAILABLE:
        engines.append(NativeJourneyProcessor(CONFIG))  # type: ignore[arg-type]
    ids = ["c9", "c10", "b", "a2", "a10", "z", "c1"]
    for p in engines:
        p.apply([ev("landing", i * 0.5, cid) for i, cid in enumerate(ids)])
        state = p.detach("b")
        assert state is not None
        p.attach("b", state)
        assert sorted(c for cids in p._due.values() for c in cids) == sorted(ids)
        out = p.expire(at(60 * 24 + 60))  # a day and an hour later: every journey is due
        assert [(s.customer_id, s.dst) for s in out.steps] == [(c, NULL) for c in sorted(ids)]
        assert p._due == {}
