"""The processor chain: what the replay and the workers share (no I/O)."""

from __future__ import annotations

import random

import orjson

from processors.chain import JourneyChain
from processors.config import (
    DecodeConfig,
    FunnelConfig,
    FunnelStage,
    JourneyConfig,
    ProcessingConfig,
)
from processors.validation import Source
from tests.factories import MIN_MS, T0_MS

FUNNEL = FunnelConfig(
    name="f",
    stages=[
        FunnelStage(name="visit", touchpoints=["landing_page"]),
        FunnelStage(name="signup", touchpoints=["signup"]),
        FunnelStage(name="buy", touchpoints=["purchase"]),
    ],
)
CONFIG = ProcessingConfig(
    funnels=[FUNNEL], journey=JourneyConfig(allowed_lateness_s=600), identity_salt="s"
)


def message(i: int, touchpoint: str, at_ms: int, **identities: str) -> tuple[bytes, Source]:
    body = {
        "event_id": f"e{i}",
        "occurred_at": at_ms,
        "channel": "web",
        "touchpoint": touchpoint,
        "identities": identities or {"anonymous_id": "a1"},
    }
    return orjson.dumps(body), Source("t", 0, i)


def run(messages: list[tuple[bytes, Source]], batch: int = 3) -> dict[str, object]:
    chain = JourneyChain(CONFIG)
    outs = [chain.process(messages[i : i + batch]) for i in range(0, len(messages), batch)]
    outs.append(chain.finish())
    return {
        "funnel": sorted(
            (t.customer_id, t.from_stage, t.to_stage, t.ts_ms)
            for o in outs
            for t in o.funnel_transitions
        ),
        "released": [
            (e.customer_id, e.event.event_id) for o in outs for e in o.released
        ],
        "dead": [d.reason for o in outs for d in o.dead],
        "late": [x.event.event.event_id for o in outs for x in o.late],
        "dups": [e.event.event_id for o in outs for e in o.duplicates],
        "merges": [(m.loser, m.winner) for o in outs for m in o.merges],
        "steps": sum(s.sign for o in outs for s in o.steps),
        "chain": chain,
    }


def test_bad_input_and_unusable_identities_are_dead_letters() -> None:
    good = message(1, "landing_page", T0_MS)
    junk = message(2, "landing_page", T0_MS, anonymous_id="undefined")
    result = run([good, (b"{oops", Source("t", 0, 9)), junk])
    assert result["dead"][0].startswith("not valid JSON")
    assert "identif" in result["dead"][1]
    assert result["released"] == [(result["released"][0][0], "e1")]


def test_funnels_see_events_in_event_time_order_whatever_the_arrival_order() -> None:
    # visitor a1 signs up as u1; arrival order shuffled within the allowed lateness (10 min)
    events = [
        message(1, "landing_page", T0_MS, anonymous_id="a1"),
        message(2, "signup", T0_MS + 1 * MIN_MS, anonymous_id="a1", user_id="u1"),
        message(3, "purchase", T0_MS + 2 * MIN_MS, user_id="u1"),
        message(4, "landing_page", T0_MS + 3 * MIN_MS, anonymous_id="a2"),
        message(5, "landing_page", T0_MS + 30 * MIN_MS, anonymous_id="a3"),
    ]
    in_order = run(events)
    rng = random.Random(3)
    for _ in range(10):
        head = events[:4]
        rng.shuffle(head)
        shuffled = run([*head, events[4]])
        assert shuffled["funnel"] == in_order["funnel"]
        assert sorted(shuffled["released"]) == sorted(in_order["released"])
        assert shuffled["steps"] == in_order["steps"]
    stages = [(f, t) for _, f, t, _ in in_order["funnel"]]
    assert (0, 1) in stages and (1, 2) in stages  # visit -> signup -> buy


def test_released_events_carry_the_final_customer_after_a_merge() -> None:
    # a1 and u1 are separate customers until event 3 links them
    events = [
        message(1, "landing_page", T0_MS, anonymous_id="a1"),
        message(2, "pricing_page", T0_MS + MIN_MS, user_id="u1"),
        message(3, "signup", T0_MS + 2 * MIN_MS, anonymous_id="a1", user_id="u1"),
    ]
    result = run(events, batch=1)
    assert len(result["merges"]) == 1
    customers = {c for c, _ in result["released"]}
    assert len(customers) == 1, result["released"]


def test_a_merge_combines_both_customers_open_funnel_runs() -> None:
    #   a1:  V(0) . . . . . . . . . . . . . . . S(16, links a1 and u1) . . . P(30, a1)
    #   u1:  . V(1) . . . . . . . . . . . . x(15)
    # Both visits are released (behind the frontier) before the link merges the customers:
    # as one customer there is one run, entered once at visit and converted.
    events = [
        message(1, "landing_page", T0_MS, anonymous_id="a1"),
        message(2, "landing_page", T0_MS + MIN_MS, user_id="u1"),
        message(3, "pricing_page", T0_MS + 15 * MIN_MS, user_id="u1"),
        message(4, "signup", T0_MS + 16 * MIN_MS, anonymous_id="a1", user_id="u1"),
        message(5, "purchase", T0_MS + 30 * MIN_MS, anonymous_id="a1"),
    ]
    result = run(events, batch=1)
    assert len(result["merges"]) == 1
    chain = result["chain"]
    rows = [(r.stage, r.n_entered, r.n_advanced, r.n_dropped)
            for r in chain.funnels.snapshot(())]  # type: ignore[attr-defined]
    assert rows == [("visit", 1, 1, 0), ("signup", 1, 1, 0), ("buy", 1, 0, 0)]
    assert all(not runs for runs in chain.funnels.state.runs.values())  # type: ignore[attr-defined]


def test_duplicates_and_late_events_are_counted_not_applied() -> None:
    events = [
        message(1, "landing_page", T0_MS),
        message(1, "landing_page", T0_MS),  # the same event delivered twice
        message(2, "pricing_page", T0_MS + 60 * MIN_MS),
        message(3, "signup", T0_MS + 5 * MIN_MS),  # 55 min behind: past the 10 min lateness
    ]
    result = run(events, batch=1)
    assert result["dups"] == ["e1"]
    assert result["late"] == ["e3"]
    assert [e for _, e in result["released"]] == ["e1", "e2"]


def test_a_pickled_chain_continues_exactly_like_the_original() -> None:
    # what a worker's checkpoint relies on: restore, continue, same outputs
    import pickle

    from simulator.model import SimConfig, simulate

    lines = simulate(SimConfig(customers=60, seed=4)).lines
    messages = [(line, Source("f", 0, i)) for i, line in enumerate(lines)]
    half = len(messages) // 2

    def outputs(chain: JourneyChain, batch: list[tuple[bytes, Source]]) -> list[object]:
        out = chain.process(batch)
        return [
            sorted((s.customer_id, s.src, s.dst, s.ts_ms, s.sign) for s in out.steps),
            sorted(out.cells),
            sorted((t.customer_id, t.to_stage, t.ts_ms) for t in out.funnel_transitions),
            [(e.customer_id, e.event.event_id) for e in out.released],
        ]

    straight = JourneyChain(CONFIG)
    outputs(straight, messages[:half])
    restored = pickle.loads(pickle.dumps(JourneyChain(CONFIG)))
    outputs(restored, messages[:half])
    restored = pickle.loads(pickle.dumps(restored))
    assert outputs(restored, messages[half:]) == outputs(straight, messages[half:])
    assert restored.attribution() == straight.attribution()


def test_process_and_process_accepted_give_the_same_outputs_and_sources() -> None:
    """`process` hands the resolver the decoded events without an `Accepted` each; its dead
    letters (bad input, and events without a usable identifier, each with the source of its own
    message past the bad ones) and outputs are those of `process_accepted` on `decode_batch`."""
    from processors.chain import ChainOutput
    from processors.validation import decode_batch

    messages = [
        message(0, "landing_page", T0_MS, anonymous_id="null"),
        (b"{oops", Source("t", 0, 1)),
        message(2, "landing_page", T0_MS + MIN_MS),
        (b'{"event_id": 3}', Source("t", 0, 3)),
        message(4, "signup", T0_MS + 2 * MIN_MS, anonymous_id="null"),
        message(5, "purchase", T0_MS + 3 * MIN_MS),
    ]
    for engine in ("native", "python"):
        config = CONFIG.model_copy(update={"decode": DecodeConfig(engine=engine)})
        by_process = JourneyChain(config).process(messages)
        chain = JourneyChain(config)
        accepted, dead = decode_batch(messages, engine)
        by_accepted = chain.process_accepted(accepted, ChainOutput(dead=dead))
        letters = [(d.stage, d.source.offset, d.reason, d.raw) for d in by_process.dead]
        assert letters == [(d.stage, d.source.offset, d.reason, d.raw) for d in by_accepted.dead]
        assert [(stage, offset) for stage, offset, _, _ in letters] == [
            ("validate", 1), ("validate", 3), ("resolve", 0), ("resolve", 4)
        ]
        assert [e.event for e in by_process.resolved] == [e.event for e in by_accepted.resolved]
        assert len(by_process.resolved) == 2
