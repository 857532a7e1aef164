"""The streaming merge protocol on one partition's state (streams.app._journey_batch), no I/O.

A merge of L into W is announced at W's partition ("expect": hold the frontier) and completed by
L's "transfer". When W itself is merged into Z before that transfer comes, W's partition hands
the awaited merge on with W's own transfer and passes L's transfer on when it arrives.

    W's partition:  expect(L->W)   merge(W->Z)   transfer(L->W) -> on to Z   expect(L->W) again
                                                                             (outbox re-send)
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import orjson

from processors.chain import JourneyChain
from processors.identity import MergeRecord
from streams.app import H_TYPE, Metrics, PartitionState, _journey_batch
from tests.factories import MIN_MS, T0_MS, resolved
from tests.unit.test_chain_hold import CONFIG

L_INTO_W = MergeRecord("L", "W", "ev-l", T0_MS + 3 * MIN_MS, "shared_identifier")
W_INTO_Z = MergeRecord("W", "Z", "ev-w", T0_MS + 4 * MIN_MS, "shared_identifier")


class _Messages:
    def __init__(self) -> None:
        self.offset = -1

    def __call__(self, key: str, kind: bytes | None, value: bytes) -> Any:
        self.offset += 1
        return SimpleNamespace(message=SimpleNamespace(
            offset=self.offset, key=key.encode(), value=value,
            headers=[(H_TYPE, kind)] if kind else [],
            topic="resolved", partition=0, timestamp=0))


def _control(mr: MergeRecord) -> bytes:
    return orjson.dumps(mr._asdict())


def test_a_duplicate_expect_after_the_winner_left_does_not_hold_the_partition() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    part.chain.process_resolved([resolved("W", "landing_page", T0_MS, event_id="w1")])
    loser = JourneyChain(CONFIG)
    loser.process_resolved([resolved("L", "pricing_page", T0_MS + MIN_MS, event_id="l1")])
    transfer = pickle.dumps((L_INTO_W, loser.detach_customer("L", "W"), None, []))
    msg = _Messages()

    _journey_batch(runtime, part, [msg("W", b"expect", _control(L_INTO_W))])
    assert part.chain.hold is not None
    _, _, sent, _ = _journey_batch(runtime, part, [msg("W", b"merge", _control(W_INTO_Z))])
    assert [k for k, _, _ in sent] == [b"Z"]  # W's state, with the awaited merge handed on
    _, _, sent, _ = _journey_batch(runtime, part, [msg("W", b"transfer", transfer)])
    assert [k for k, _, _ in sent] == [b"Z"]  # L's transfer follows W
    _journey_batch(runtime, part, [msg("W", b"expect", _control(L_INTO_W))])

    assert part.awaiting == {} and part.chain.hold is None
    assert part.chain.winner_of("W") == "Z" and part.away == {"W": "Z"}


def test_partition_states_pickled_before_passed_existed_load() -> None:
    part = PartitionState(JourneyChain(CONFIG))
    state = dict(part.__dict__)
    del state["passed"]
    old = PartitionState.__new__(PartitionState)
    old.__setstate__(state)
    assert old.passed == set()


C2_INTO_C1 = MergeRecord("C2", "C1", "ev-m2", T0_MS + MIN_MS, "earlier_evidence")
C1_INTO_C2 = MergeRecord("C1", "C2", "ev-m1", T0_MS + 30 * MIN_MS, "shared_identifier")


def _cycle(controls: list[tuple[str, bytes, MergeRecord]]) -> tuple[list[str], PartitionState]:
    """Two customers on one partition, then merge `controls` (key, kind, merge) each handled
    as it comes, with the partition's own outputs (forwards, transfers) coming back to it."""
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    msg = _Messages()
    queue: list[Any] = []
    released: list[str] = []

    def send(key: str, kind: bytes | None, value: bytes) -> None:
        queue.append(msg(key, kind, value))
        steps = 0
        while queue:
            steps += 1
            assert steps < 100, "messages bounce between customers for ever"
            out, forwards, transfers, _ = _journey_batch(runtime, part, [queue.pop(0)])
            released.extend(r.event.event_id for r in out.released)
            released.extend(x.event.event.event_id for x in out.late)
            for k, v, headers in forwards + transfers:
                queue.append(msg(k.decode(), dict(headers).get(H_TYPE), v))

    for cid, tp, minute, eid in [("C1", "landing_page", 10, "a1"), ("C1", "pricing_page", 20, "a2"),
                                 ("C2", "signup", 25, "d1"), ("C2", "trial_start", 40, "d2"),
                                 ("C1", "landing_page", 35, "a0")]:
        event = resolved(cid, tp, T0_MS + minute * MIN_MS, event_id=eid).event
        send(cid, None, event.model_dump_json().encode())
    for key, kind, mr in controls:
        send(key, kind, _control(mr))
    part.chain.hold = None
    released.extend(r.event.event_id for r in part.chain.finish().released)
    return sorted(released), part


def test_a_merge_cycle_keeps_every_event_of_the_customer() -> None:
    # C1 into C2 and back (C2 into C1 by earlier evidence), the later merge's messages first
    # (an outbox re-send in merge-time order): after C2 came home into C1 and C2 was revived by
    # the next expect, C2's old waiting event was filed under the revived C2, and the transfer
    # of C1 dropped it as a copy it had seen.
    released, part = _cycle([("C1", b"expect", C2_INTO_C1), ("C2", b"merge", C2_INTO_C1),
                             ("C2", b"expect", C1_INTO_C2), ("C1", b"merge", C1_INTO_C2)])
    assert released == ["a0", "a1", "a2", "d1", "d2"]
    assert part.awaiting == {}


def test_a_merge_cycle_whose_messages_cross_does_not_bounce_for_ever() -> None:
    # Both expects before both merges (a re-send of both at once): each customer leaves for
    # the other, and each transfer was passed on to the other's winner without end.
    released, part = _cycle([("C2", b"expect", C1_INTO_C2), ("C1", b"expect", C2_INTO_C1),
                             ("C1", b"merge", C1_INTO_C2), ("C2", b"merge", C2_INTO_C1)])
    assert released == ["a0", "a1", "a2", "d1", "d2"]
    assert part.awaiting == {}


def test_a_cycle_crossed_between_two_partitions_holds_neither_for_good() -> None:
    # L into W, then W back into L, sent by two workers at once: each partition hears of the
    # second merge before the first one detached its customer (the ingest side now sends related
    # merges in commit order; this is the safety net). L's and W's partitions then each sent
    # their customer to the other, each transfer bounced home, and each partition waited for good
    # for the merge it had itself passed on: neither released anything again.
    l_into_w = MergeRecord("L", "W", "ev-1", T0_MS + 30 * MIN_MS, "shared_identifier")
    w_into_l = MergeRecord("W", "L", "ev-2", T0_MS + MIN_MS, "earlier_evidence")
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    parts = {"L": PartitionState(JourneyChain(CONFIG)), "W": PartitionState(JourneyChain(CONFIG))}
    queues: dict[str, list[Any]] = {"L": [], "W": []}
    messages = {"L": _Messages(), "W": _Messages()}
    released: list[str] = []

    def send(key: str, kind: bytes | None, value: bytes) -> None:
        home = key.split("@")[0]
        queues[home].append(messages[home](key, kind, value))

    def drain(first: str) -> None:  # one message at a time, alternating between partitions
        turn, steps = first, 0
        while queues["L"] or queues["W"]:
            steps += 1
            assert steps < 100, "messages bounce between the partitions for ever"
            if queues[turn]:
                out, forwards, transfers, _ = _journey_batch(runtime, parts[turn],
                                                            [queues[turn].pop(0)])
                released.extend(r.event.event_id for r in out.released)
                for k, v, headers in forwards + transfers:
                    send(k.decode(), dict(headers).get(H_TYPE), v)
            turn = "W" if turn == "L" else "L"

    send("L", None, resolved("L", "landing_page", T0_MS + 10 * MIN_MS, event_id="l1")
         .event.model_dump_json().encode())
    send("W", None, resolved("W", "signup", T0_MS + 25 * MIN_MS, event_id="w1")
         .event.model_dump_json().encode())
    drain("L")
    for key, kind, mr in [("W", b"expect", l_into_w), ("L", b"expect", w_into_l),
                          ("L", b"merge", l_into_w), ("W", b"merge", w_into_l)]:
        send(key, kind, _control(mr))
    drain("L")

    assert parts["L"].awaiting == {} and parts["W"].awaiting == {}
    assert parts["L"].chain.hold is None and parts["W"].chain.hold is None
    for part in parts.values():
        released.extend(r.event.event_id for r in part.chain.finish().released)
    assert sorted(released) == ["l1", "w1"]
