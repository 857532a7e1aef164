"""Envelopes on touchpoints.resolved (streams.envelope): the layout, the grouping by partition,
and the journey agent reading them as it reads one event per message (issue 6). No I/O."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.partitioner import DefaultPartitioner

from processors.chain import JourneyChain
from processors.identity import MergeRecord
from streams import envelope
from streams.app import Metrics, PartitionState, _events_in, _journey_batch
from streams.envelope import (
    H_EVENTS,
    EnvelopeError,
    count,
    group,
    pack,
    partition_of,
    unpack,
)
from tests.factories import MIN_MS, T0_MS, resolved
from tests.unit.test_chain_hold import CONFIG
from tests.unit.test_chain_transfers import _control, _Messages
from tests.unit.test_hold_moves_on import _event


def test_pack_and_unpack_keep_every_key_and_value_in_order() -> None:
    items = [(b"cus-1", b'{"a": 1}'), ("kundé-2".encode(), b""), (b"", b"x" * 70_000),
             (b"cus-1", b"\x00\xff")]
    value = pack(items)
    assert unpack(value) == items
    assert count(value) == 4
    assert unpack(pack([])) == [] and count(pack([])) == 0


@pytest.mark.parametrize(("value", "says"), [
    (b"", "no event count"),
    (b"\x01\x00", "no event count"),
    (pack([(b"k", b"value")])[:-1], "truncated: event 1 of 1 needs 1 more bytes"),
    (pack([(b"k", b"v")])[:6], "truncated: event 1 of 1 has no header"),
    (pack([(b"k", b"v"), (b"k2", b"v2")])[:4] + pack([(b"k", b"v")])[4:],
     "event 2 of 2 has no header"),
    (pack([(b"k", b"v")]) + b"!", "1 bytes after the 1 events"),
])
def test_a_broken_envelope_says_what_is_wrong(value: bytes, says: str) -> None:
    with pytest.raises(EnvelopeError, match=says):
        unpack(value)


def test_a_key_longer_than_the_layout_allows_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="65,536 bytes"):
        pack([(b"k" * 65_536, b"v")])


def test_partition_of_is_the_keyed_producers_partitioner() -> None:
    for n in (1, 2, 4, 7):
        for key in (b"cus-1", b"cus-2", "kundé".encode(), b""):
            assert partition_of(key, n) == DefaultPartitioner()(key, list(range(n)), None)


def test_remembered_partitions_stay_the_partitioners_past_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """partition_of remembers each key's partition per partition count, and forgets them all
    when one count holds KNOWN_KEYS keys: asked again, in any order, the answers do not move."""
    monkeypatch.setattr(envelope, "KNOWN_KEYS", 50)
    monkeypatch.setattr(envelope, "_KNOWN", {})
    keys = [f"cus-{i}".encode() for i in range(130)]
    for _ in range(2):
        for n in (3, 8):
            for key in keys + keys[::-1]:
                assert partition_of(key, n) == DefaultPartitioner()(key, list(range(n)), None)
    assert all(len(known) <= 50 for known in envelope._KNOWN.values())
    assert set(envelope._KNOWN) == {3, 8}


def test_group_sends_each_event_to_its_keys_partition_in_order() -> None:
    items = [(f"cus-{i % 13}".encode(), f"ev-{i}".encode(), 1000 + (i * 7919) % 500)
             for i in range(400)]
    out = list(group(items, 4))
    got: dict[int, list[tuple[bytes, bytes]]] = {}
    for p, value, earliest in out:
        events = unpack(value)
        assert earliest == min(ts for k, v, ts in items if (k, v) in set(events))
        got.setdefault(p, []).extend(events)
    for p, events in got.items():
        assert events == [(k, v) for k, v, _ in items if partition_of(k, 4) == p]
    assert len(out) == len(got)  # one envelope per partition when they are small


def test_group_splits_large_groups_keeping_their_order() -> None:
    items = [(b"same", f"ev-{i:04d}".encode() * 10, None) for i in range(1_000)]
    out = list(group(items, 3, max_bytes=4_096))
    assert len(out) > 10
    assert all(len(value) <= 4_096 for _, value, _ in out)
    assert {p for p, _, _ in out} == {partition_of(b"same", 3)}
    assert [e for _, value, _ in out for e in unpack(value)] == [(k, v) for k, v, _ in items]
    assert all(earliest is None for _, _, earliest in out)
    big = list(group([(b"k", b"v" * 10_000, 5)], 3, max_bytes=100))  # alone in its envelope
    assert [unpack(v) for _, v, _ in big] == [[(b"k", b"v" * 10_000)]]


def _envelope(msg: _Messages, events: list[SimpleNamespace]) -> SimpleNamespace:
    """One message holding `events` (made by `_event`) as the ingest agent packs them."""
    out = msg("", H_EVENTS, pack([(e.message.key, e.message.value) for e in events]))
    out.message.key = None
    return out


def _applied(out: object) -> list[tuple[str, str]]:
    return [(e.customer_id, e.event.event_id) for e in out.applied]  # type: ignore[attr-defined]


def test_an_envelope_is_processed_as_its_events_one_message_each() -> None:
    """The same events, controls between them, sent one per message and in envelopes: the
    same outputs and state, every envelope event with its envelope's offset."""
    merge = MergeRecord("L", "W", "ev-l", T0_MS, "shared_identifier")
    spare = _Messages()  # makes the events only
    events = [_event(spare, c, f"{c.lower()}{i}", T0_MS + (i * 3 + j) * MIN_MS)
              for i in range(4) for j, c in enumerate("ABW")]

    one = _Messages()
    singles = [_event(one, e.message.key.decode(), "", 0) for e in events[:6]]
    for s, e in zip(singles, events[:6], strict=True):
        s.message.value = e.message.value
    control = one("W", b"expect", _control(merge))
    rest = [_event(one, e.message.key.decode(), "", 0) for e in events[6:]]
    for s, e in zip(rest, events[6:], strict=True):
        s.message.value = e.message.value

    env = _Messages()
    batch = [_envelope(env, events[:6]), env("W", b"expect", _control(merge)),
             _envelope(env, events[6:])]

    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    by_one = PartitionState(JourneyChain(CONFIG))
    want = _journey_batch(runtime, by_one, [*singles, control, *rest])
    by_env = PartitionState(JourneyChain(CONFIG))
    got = _journey_batch(runtime, by_env, batch)

    assert _applied(got[0]) == _applied(want[0])
    assert len(_applied(got[0])) == 12
    assert [e.event.event_id for e in got[0].released] == \
        [e.event.event_id for e in want[0].released]
    assert got[0].steps == want[0].steps
    assert by_env.awaiting == by_one.awaiting == {("L", "ev-l"): "W"}
    assert by_env.offset == 2  # three messages
    assert [_events_in(m) for m in batch] == [6, 1, 6]


def test_an_envelope_seen_before_is_skipped_whole() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    spare = _Messages()
    env = _Messages()
    first = _envelope(env, [_event(spare, "A", "a1", T0_MS), _event(spare, "B", "b1", T0_MS)])
    _journey_batch(runtime, part, [first])
    again = _journey_batch(runtime, part, [first])  # redelivered after a crash, say
    assert _applied(again[0]) == [] and again[0].duplicates == []


def test_unreadable_envelopes_and_events_in_them_are_dead_letters_not_drops() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    spare = _Messages()
    env = _Messages()
    good = _event(spare, "A", "a1", T0_MS)
    broken = env("", H_EVENTS, pack([(b"A", good.message.value)])[:-3])  # offset 0
    bad_key = env("", H_EVENTS, pack([(b"\xff\xfe", good.message.value),  # offset 1
                                      (b"B", b"not json"),
                                      (b"A", good.message.value)]))
    out, _, _, _ = _journey_batch(runtime, part, [broken, bad_key])

    assert _applied(out) == [("A", "a1")]
    assert [(d.stage, d.source.offset) for d in out.dead] == [
        ("journey", 0), ("journey", 1), ("journey", 1)]
    assert out.dead[0].reason.startswith("not a readable envelope of events: envelope truncated")
    assert out.dead[0].raw == broken.message.value  # the whole message, nothing lost
    assert "is not UTF-8" in out.dead[1].reason and out.dead[1].raw == good.message.value
    assert out.dead[2].reason.startswith("not valid JSON") and out.dead[2].raw == b"not json"
    assert runtime.metrics.dead.labels("journey")._value.get() == 3
    assert part.offset == 1


def test_an_event_of_a_customer_merged_away_is_forwarded_from_an_envelope() -> None:
    runtime = SimpleNamespace(metrics=Metrics(), models=None)
    part = PartitionState(JourneyChain(CONFIG))
    part.chain.process_resolved([resolved("L", "landing_page", T0_MS, event_id="l0")])
    part.chain.detach_customer("L", "W")
    spare = _Messages()
    env = _Messages()
    late = _event(spare, "L", "l1", T0_MS + MIN_MS)
    out, forwards, _, _ = _journey_batch(
        runtime, part, [_envelope(env, [late, _event(spare, "A", "a1", T0_MS)])],
        here=lambda customer: customer != "W",
    )
    assert forwards == [(b"W", late.message.value, {})]
    assert _applied(out) == [("A", "a1")]
