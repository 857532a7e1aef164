"""The batch event time (`events.epoch_ms_many`, `event_times_ms`) equals the reference
`int(at.timestamp() * 1000)` for every datetime: any date in years 1-9999, any fixed offset
(pydantic-core's `TzInfo`, `datetime.timezone` to the microsecond), fold 0 or 1, sub-millisecond
microseconds, before 1970, batches that mix offsets and tz kinds (a named zone, naive), and
batches on both sides of the size where numpy takes over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import TzInfo

from processors.events import _VECTOR_MIN, epoch_ms_many, event_times_ms
from processors.validation import Source, decode_batch
from tests.factories import event


def reference(at: datetime) -> int:
    return int(at.timestamp() * 1000)


_PYDANTIC_TZ = st.integers(-86_399, 86_399).map(TzInfo)
_FIXED_TZ = st.integers(-86_399_999_999, 86_399_999_999).map(
    lambda us: timezone(timedelta(microseconds=us))
)
_ANY_TZ: st.SearchStrategy[tzinfo | None] = st.one_of(
    _PYDANTIC_TZ,
    _FIXED_TZ,
    st.just(UTC),
    st.just(ZoneInfo("Europe/Paris")),  # not a fixed offset: the reference decides
    st.none(),  # naive: local time, the reference decides
)


def _aware(tz: st.SearchStrategy[tzinfo | None]) -> st.SearchStrategy[datetime]:
    return st.builds(
        lambda at, zone, fold: at.replace(tzinfo=zone, fold=fold),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59,
                                                                     999_999)),
        tz,
        st.integers(0, 1),
    )


# Around the present (where event times are): dense in sub-millisecond microseconds, the
# float rounding the reference's `* 1000` does.
_RECENT = st.integers(-(2**50), 2**50).map(
    lambda us: datetime(1970, 1, 1, tzinfo=TzInfo(0)) + timedelta(microseconds=us)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_aware(_ANY_TZ), max_size=3 * _VECTOR_MIN))
def test_any_datetimes_equal_the_reference(ats: list[datetime]) -> None:
    assert epoch_ms_many(ats) == [reference(at) for at in ats]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_aware(_PYDANTIC_TZ), min_size=_VECTOR_MIN, max_size=2 * _VECTOR_MIN),
    st.lists(_RECENT, min_size=_VECTOR_MIN, max_size=2 * _VECTOR_MIN),
)
def test_vector_path_equals_the_reference(one_each: list[datetime], recent: list[datetime]) -> None:
    assert epoch_ms_many(one_each) == [reference(at) for at in one_each]
    assert epoch_ms_many(recent) == [reference(at) for at in recent]
    same_tz = [at.replace(tzinfo=one_each[0].tzinfo) for at in recent]  # one offset for all
    assert epoch_ms_many(same_tz) == [reference(at) for at in same_tz]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-(2**41), 2**41), st.integers(-1439, 1439), st.booleans()),
        min_size=1,
        max_size=2 * _VECTOR_MIN,
    )
)
def test_decoded_events_cache_the_reference(rows: list[tuple[int, int, bool]]) -> None:
    """Events as the decoder makes them (RFC 3339 with any minute offset, or epoch ms): the
    batch's times are the reference, and each event's `ts_ms` reads the same afterwards."""
    raws = []
    for i, (us, offset_min, as_text) in enumerate(rows):
        tz = timezone(timedelta(minutes=offset_min))
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
        ev = event("landing_page", at_ms=0, event_id=f"e{i}").model_dump(mode="json")
        ev["occurred_at"] = at.astimezone(tz).isoformat() if as_text else us // 1000
        raws.append((orjson.dumps(ev), Source()))
    accepted, dead = decode_batch(raws)
    assert not dead
    events = [a.event for a in accepted]
    expected = [reference(ev.occurred_at) for ev in events]
    assert event_times_ms(events) == expected
    assert [ev.ts_ms for ev in events] == expected
