"""The journey agent decodes each run of events in one call, and dead-letters what is not an
event instead of dropping it (issue 6)."""

from __future__ import annotations

from types import SimpleNamespace

from processors.chain import JourneyChain
from processors.identity import MergeRecord
from streams.app import Metrics, PartitionState, _journey_batch
from tests.factories import MIN_MS, T0_MS
from tests.unit.test_chain_hold import CONFIG
from tests.unit.test_chain_transfers import _control, _Messages
from tests.unit.test_hold_moves_on import _event


def _bad(msg: _Messages, customer: str, value: bytes) -> SimpleNamespace:
    out = msg(customer, None, value)
    out.message.headers = None
    return out


def test_events_keep_their_customers_and_order_around_bad_messages_and_controls() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    msg = _Messages()
    merge = MergeRecord("L", "W", "ev-l", T0_MS, "shared_identifier")
    batch = [
        _event(msg, "A", "a1", T0_MS),
        _bad(msg, "A", b'{"event_id": "x"}'),                  # offset 1: a broken event
        _event(msg, "B", "b1", T0_MS + MIN_MS),
        msg("W", b"expect", _control(merge)),                 # a control between two runs
        _bad(msg, "B", b"not json"),                          # offset 4
        _event(msg, "B", "b2", T0_MS + 2 * MIN_MS),
        _event(msg, "A", "a2", T0_MS + 3 * MIN_MS),
    ]
    out, _, _, _ = _journey_batch(runtime, part, batch)

    assert [(e.customer_id, e.event.event_id) for e in out.applied] == [
        ("A", "a1"), ("B", "b1"), ("B", "b2"), ("A", "a2")]
    assert [(d.stage, d.source.offset, d.raw) for d in out.dead] == [
        ("journey", 1, b'{"event_id": "x"}'), ("journey", 4, b"not json")]
    assert out.dead[1].reason.startswith("not valid JSON")
    assert "channel" in out.dead[0].reason  # the model's own field errors
    assert runtime.metrics.dead.labels("journey")._value.get() == 2
    assert part.offset == 6  # every message consumed
