"""decode_batch gives every message exactly the answer decode gives it, whatever the mix."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.validation import Source, decode_batch
from tests.unit.test_decode_batch import GOOD, one_by_one

valid = st.builds(
    lambda i, t, ids: orjson.dumps(
        {**GOOD, "event_id": f"e{i}", "occurred_at": t, "identities": ids}
    ),
    st.integers(0, 10**6),
    st.integers(0, 4 * 10**12) | st.just("2026-03-01T12:00:00+02:00"),
    st.dictionaries(
        st.sampled_from(["anonymous_id", "device_id", "user_id", "email", "crm_id"]),
        st.text(min_size=1, max_size=5),
        min_size=1,
    ),
)
# Pieces of valid events, and valid events glued together: what could fool a join.
fragment = st.builds(lambda raw, cut: raw[:cut], valid, st.integers(0, 150)) | st.builds(
    lambda raw, cut: raw[cut:], valid, st.integers(0, 150)
)
glued = st.builds(lambda a, b, sep: a + sep + b, valid, valid, st.sampled_from([b",", b"", b" "]))
garbage = st.binary(max_size=40) | st.sampled_from([b'"', b'"}', b"0", b"1,2", b"]", b"[", b"{"])
message = st.one_of(valid, valid, valid, fragment, glued, garbage)


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=40))
def test_batch_equals_message_by_message(messages: list[bytes]) -> None:
    batch = [(raw, Source("t", 0, i)) for i, raw in enumerate(messages)]
    assert decode_batch(batch) == one_by_one(batch)
