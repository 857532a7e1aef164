"""A merge whose winner is on the loser's own partition is completed at once (issue 6).

Sent through Kafka, the transfer (and an event forwarded to the winner) joined the end of the
partition, behind everything not yet read, and the partition held its frontier all that time.
Applied as the next message instead, the result must be the one Kafka's delivery of the
transfer right after the merge control gives. One partition, lateness 10 min:

    offset:  0 l1@0 (L)   1 w1@1 (W)   2 expect(L->W)   3 merge(L->W)   4 l2@2 (L, after it)
             through Kafka: 5 forward l2 (W)   6 transfer(L->W)
             5 (or 7) x1@60 (X): everything up to the frontier (50) is released
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from processors.chain import JourneyChain
from processors.identity import MergeRecord
from streams.app import Metrics, PartitionState, _journey_batch, partition_of
from tests.factories import MIN_MS, T0_MS
from tests.unit.test_chain_hold import CONFIG
from tests.unit.test_chain_transfers import _control, _Messages
from tests.unit.test_hold_moves_on import _event

L_INTO_W = MergeRecord("L", "W", "ev-l", T0_MS + 1 * MIN_MS, "shared_identifier")


def _run(*, local: bool) -> tuple[list[tuple[str, str]], PartitionState, int]:
    """(released (customer, event) in order, the partition, messages sent through Kafka)."""
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    msg = _Messages()
    here = (lambda customer: True) if local else None
    batch: list[Any] = [
        _event(msg, "L", "l1", T0_MS), _event(msg, "W", "w1", T0_MS + MIN_MS),
        msg("W", b"expect", _control(L_INTO_W)), msg("L", b"merge", _control(L_INTO_W)),
        _event(msg, "L", "l2", T0_MS + 2 * MIN_MS),
    ]
    released: list[tuple[str, str]] = []
    sent = 0
    while batch:
        out, forwards, transfers, _ = _journey_batch(runtime, part, batch, here=here)
        released += [(e.customer_id, e.event.event_id) for e in out.released]
        sent += len(forwards) + len(transfers)
        batch = [msg(key.decode(), dict(headers).get("jm-type"), value)
                 for key, value, headers in forwards + transfers]
        for b in batch:  # a forwarded event is a plain event again
            if not b.message.headers:
                b.message.headers = None
    out, _, _, _ = _journey_batch(runtime, part, [_event(msg, "X", "x1", T0_MS + 60 * MIN_MS)],
                                  here=here)
    released += [(e.customer_id, e.event.event_id) for e in out.released]
    return released, part, sent


def test_a_merge_on_its_own_partition_is_completed_without_a_trip_through_kafka() -> None:
    through_kafka, kafka_part, kafka_sent = _run(local=False)
    at_once, part, sent = _run(local=True)
    assert kafka_sent == 2 and sent == 0
    assert at_once == through_kafka == [("W", "l1"), ("W", "w1"), ("W", "l2")]
    assert part.awaiting == {} and part.chain.hold is None
    assert part.adopted == kafka_part.adopted == {("L", "ev-l")}
    assert part.chain.journeys.customers.keys() == kafka_part.chain.journeys.customers.keys()


def test_partition_of_is_the_producers_partitioner() -> None:
    # aiokafka's DefaultPartitioner: murmur2 of the key, positive, modulo the partition count
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"c-1", b"customer-42", b"W", b""):
        for n in (1, 4, 7):
            assert partition_of(key, n) == DefaultPartitioner()(key, list(range(n)), None)
