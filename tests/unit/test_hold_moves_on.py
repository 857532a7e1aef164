"""A partition that keeps receiving merges releases as their transfers arrive (issue 6).

Each awaited merge holds the winner's partition at the frontier it found when announced; the
partition holds at the earliest of those. Lateness 10 min, one partition (W's and Y's):

    offset:  0 w1@0   1 expect(L->W)   2 x1@30   3 expect(K->Y)   4 x2@60
             5 transfer(L->W)          -> w1, l1 released; x1 still held (K->Y announced at 20)
             6 transfer(K->Y)          -> everything up to the frontier (50) released

Held at the first announcement until nothing at all was awaited, w1 and l1 would wait for
K->Y's transfer too, and with merges arriving all the time, for a pause in the input.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import orjson

from processors.chain import JourneyChain
from processors.identity import MergeRecord
from streams.app import Metrics, PartitionState, _journey_batch
from tests.factories import MIN_MS, T0_MS, resolved
from tests.unit.test_chain_hold import CONFIG
from tests.unit.test_chain_transfers import _Messages

L_INTO_W = MergeRecord("L", "W", "ev-l", T0_MS + 1 * MIN_MS, "shared_identifier")
K_INTO_Y = MergeRecord("K", "Y", "ev-k", T0_MS + 25 * MIN_MS, "shared_identifier")


def _transfer(mr: MergeRecord, event_id: str, at_ms: int) -> bytes:
    loser = JourneyChain(CONFIG)
    loser.hold_at_current()  # nothing released on the loser's side before it leaves
    loser.process_resolved([resolved(mr.loser, "pricing_page", at_ms, event_id=event_id)])
    return pickle.dumps((mr, loser.detach_customer(mr.loser, mr.winner), None, []))


def _event(msg: _Messages, customer: str, event_id: str, at_ms: int) -> SimpleNamespace:
    ev = resolved(customer, "landing_page", at_ms, event_id=event_id)
    out = msg(customer, b"", b"")
    out.message.headers = None
    out.message.value = ev.event.model_dump_json().encode()
    return out


def _released(outs: list) -> list[str]:
    return [e.event.event_id for o in outs for e in o[0].released]


def test_the_hold_moves_on_when_the_oldest_awaited_transfer_arrives() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    msg = _Messages()
    control = orjson.dumps
    first = [
        _journey_batch(runtime, part, [_event(msg, "W", "w1", T0_MS)]),
        _journey_batch(runtime, part, [msg("W", b"expect", control(L_INTO_W._asdict()))]),
        _journey_batch(runtime, part, [_event(msg, "X", "x1", T0_MS + 30 * MIN_MS)]),
        _journey_batch(runtime, part, [msg("Y", b"expect", control(K_INTO_Y._asdict()))]),
        _journey_batch(runtime, part, [_event(msg, "X", "x2", T0_MS + 60 * MIN_MS)]),
    ]
    assert _released(first) == []
    assert part.chain.hold is not None and part.chain.hold[0] == T0_MS - 10 * MIN_MS

    l_arrives = [_journey_batch(runtime, part, [
        msg("W", b"transfer", _transfer(L_INTO_W, "l1", T0_MS + 1 * MIN_MS))])]
    assert _released(l_arrives) == ["w1", "l1"]  # x1 (30) waits: K->Y was announced at 20
    assert part.chain.hold is not None and part.chain.hold[0] == T0_MS + 20 * MIN_MS

    k_arrives = [_journey_batch(runtime, part, [
        msg("Y", b"transfer", _transfer(K_INTO_Y, "k1", T0_MS + 25 * MIN_MS))])]
    assert _released(k_arrives) == ["k1", "x1"]  # up to the frontier, 60 - 10
    assert part.chain.hold is None and part.held_at == {}


def test_partition_states_pickled_before_held_at_existed_hold_where_they_held() -> None:
    part = PartitionState(JourneyChain(CONFIG))
    part.awaiting[("L", "ev-l")] = "W"
    part.chain.hold = (T0_MS, T0_MS + 10 * MIN_MS)
    state = dict(part.__dict__)
    del state["held_at"]
    old = PartitionState.__new__(PartitionState)
    old.__setstate__(state)
    assert old.held_at == {("L", "ev-l"): (T0_MS, T0_MS + 10 * MIN_MS)}
