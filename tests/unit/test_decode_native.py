"""The native decode fast path (``native/decode``, ``journeymap_decode``) changes no decision.

With ``decode.engine = native`` the Rust decoder builds the events it is sure of and leaves the
rest to the Python path. So for any batch of messages, valid or not, ``decode_batch`` (and
``decode_events``, its outcome in columns, what the chain decodes with) must give exactly the
Python engine's outputs: the same accepted events (type, ``__dict__`` values and
their types, the identities' and properties' order, the fields set, extra and private, the
tzinfo's kind and offset, ``ts_ms``) with the same sources, and the same dead letters (bytes,
reason, errors, source). Messages: the simulator's lines, events drawn field by field around
each rule's edges (lengths in code points, the touchpoint pattern, channels, revenue, the
epoch-millisecond range, RFC 3339 variants, property limits, identities), JSON spellings
(escapes, whitespace, duplicate and unknown keys, raw number tokens) and byte mutations.

Needs the extension module: skips without it on a developer's machine, fails in CI.
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processors import validation
from processors.events import CHANNELS, IDENTITY_KINDS, TouchpointEvent
from processors.validation import (
    Accepted,
    DeadLetter,
    Source,
    decode,
    decode_batch,
    decode_engine,
    decode_events,
    decode_lines,
)
from simulator.model import SimConfig, simulate
from tests.native_cores import require_native


@pytest.fixture(autouse=True)
def native() -> None:
    require_native(validation.NATIVE_AVAILABLE, validation.NATIVE_IMPORT_ERROR, "decode",
                   "scripts/build-native.sh")


_SIMULATED = simulate(SimConfig(customers=60, seed=11)).lines


def event_state(e: TouchpointEvent) -> tuple[object, ...]:
    """Everything an event is made of, types and orders included (repr: 1 vs 1.0 vs True,
    -0.0, TzInfo vs timezone)."""
    assert type(e) is TouchpointEvent
    d = dict(e.__dict__)
    d.pop("ts_ms", None)
    ids = e.identities
    props = e.properties
    return (
        repr(d),
        [(k, type(v)) for k, v in d.items()],
        list(dict.items(ids)),
        type(ids),
        None if props is None else [(k, type(v), repr(v)) for k, v in props.items()],
        type(e.occurred_at.tzinfo),
        e.occurred_at.utcoffset(),
        str(e.occurred_at.tzinfo),
        e.__pydantic_fields_set__,
        e.__pydantic_extra__,
        e.__pydantic_private__,
        e.ts_ms,
        e.model_dump_json(),
    )


def outcome(result: Accepted | DeadLetter) -> tuple[object, ...]:
    if isinstance(result, Accepted):
        return ("accepted", event_state(result.event), result.source)
    return ("dead", result.raw, result.reason, result.errors, result.stage, result.source)


def assert_same_decisions(raws: list[bytes]) -> None:
    """decode_batch, decode_lines and decode: the native engine's outputs are the Python's."""
    pairs = [(raw, Source("touchpoints.raw", 1, i)) for i, raw in enumerate(raws)]
    want_acc, want_dead = decode_batch(pairs, "python")
    got_acc, got_dead = decode_batch(pairs, "native")
    assert list(map(outcome, got_acc)) == list(map(outcome, want_acc))
    assert list(map(outcome, got_dead)) == list(map(outcome, want_dead))
    lines_acc, lines_dead = decode_lines(raws, "f.jsonl", 5, engine="native")
    py_acc, py_dead = decode_lines(raws, "f.jsonl", 5, engine="python")
    assert list(map(outcome, lines_acc)) == list(map(outcome, py_acc))
    assert list(map(outcome, lines_dead)) == list(map(outcome, py_dead))
    for raw, source in pairs[:8]:
        assert outcome(decode(raw, source, "native")) == outcome(decode(raw, source, "python"))
    for engine in ("native", "python"):
        events, at, dead = decode_events(pairs, engine)
        assert len(events) == len(at) and list(at) == sorted(set(at))
        columns = [Accepted(e, pairs[i][1]) for e, i in zip(events, at, strict=True)]
        assert list(map(outcome, columns)) == list(map(outcome, want_acc))
        assert list(map(outcome, dead)) == list(map(outcome, want_dead))


def native_sure(raw: bytes) -> bool:
    return validation._NATIVE.decode(raw) is not None


# -- the simulator's lines: all taken by the fast path, with the Python path's events ---------


def test_the_simulator_lines_are_all_decided_natively_with_equal_events() -> None:
    found, unsure = validation._NATIVE.decode_many(list(_SIMULATED))
    assert unsure == []
    assert all(type(e) is TouchpointEvent for e in found)
    assert_same_decisions(list(_SIMULATED))


def test_auto_is_native_when_built_and_python_stays_selectable() -> None:
    assert decode_engine("auto") == "native"
    assert decode_engine("native") == "native"
    assert decode_engine("python") == "python"


def test_events_pickle_and_compare_like_the_python_ones() -> None:
    line = _SIMULATED[0]
    a = decode(line, engine="native")
    b = decode(line, engine="python")
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert a.event == b.event and hash(a.event.identities) == hash(b.event.identities)
    assert event_state(pickle.loads(pickle.dumps(a.event))) == event_state(b.event)


# -- every rule's edges, one field at a time ---------------------------------------------------

_BASE = {
    "event_id": '"e-1"',
    "occurred_at": '"2026-03-01T12:00:00.123Z"',
    "channel": '"web"',
    "touchpoint": '"pricing_page"',
    "identities": '{"anonymous_id":"a-1"}',
}


def with_field(name: str, token: str | None) -> bytes:
    """The base event with `name` set to the JSON text `token` (None: without it)."""
    body = {**_BASE, name: token}
    return ("{" + ",".join(f'"{k}":{v}' for k, v in body.items() if v is not None) + "}").encode()


def j(s: object) -> str:
    return orjson.dumps(s).decode()


def _sized_strings(limit: int) -> list[str]:
    return [j(c * n) for c in "aé€😀" for n in (limit - 1, limit, limit + 1)]


def _times() -> list[str]:
    base = ["2026", "03", "01", "T", "12", "00", "00", ".123", "Z"]
    variants = [
        (0, ["0000", "0001", "9999", "1900", "2000", "2023", "2024"]),
        (1, ["00", "02", "04", "12", "13"]),
        (2, ["00", "28", "29", "30", "31", "32"]),
        (3, ["t", " ", "_", "T"]),
        (4, ["00", "23", "24"]),
        (5, ["59", "60"]),
        (6, ["59", "60"]),
        (7, ["", ".", ".1", ".12", ".123456", ".999999", ".1234567", ".0000000"]),
        (8, ["z", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59", "-23:59", "+24:00",
             "+00:60", "+0530", "+05", "", " Z", "Z ", "+05:30:00", "UTC"]),
    ]
    out = []
    for i, values in variants:
        for v in values:
            parts = list(base)
            parts[i] = v
            out.append(j(f"{parts[0]}-{parts[1]}-{parts[2]}{''.join(parts[3:5])}:{parts[5]}:"
                         f"{parts[6]}{''.join(parts[7:])}"))
    for year, month in (("2023", "02"), ("2024", "02"), ("1900", "02"), ("2000", "02"),
                        ("2026", "04"), ("2026", "06"), ("2026", "12")):
        for day in ("28", "29", "30", "31"):
            out.append(j(f"{year}-{month}-{day}T00:00:00Z"))
    out += [j(s) for s in ("2026-03-01", "2026-03-01T12:00", "1772000000000", " 1772000000000",
                           "1e12", "", "2026-03-01T12:00:00.123Z\n")]
    out += [str(n) for n in (20_000_000_000, 20_000_000_001, 2**33 * 1000 - 1, 2**33 * 1000,
                             1_772_000_000_000, 0, -1, 19_999_999_999, -1_772_000_000_000,
                             2**63, 2**64 + 5, 10**30)]
    out += ["1772000000000.0", "1.772e12", "true", "null", "[]"]
    return out


_NUMBERS = ["0", "-0", "0.0", "-0.0", "1", "1.5", "1e2", "1E+2", "1e-7", "71.77", "-1", "-0.01",
            "1e400", "-1e400", "9007199254740993", "9007199254740992", "123456789012345678",
            "1234567890123456789", "123456789012345678901234567890", "00", "1.", ".5", "+1",
            "NaN", "Infinity", "-Infinity", "0x10", "2.5e-324", "1.7976931348623157e308",
            "0.1e1", "1e", "-"]
_ESCAPED = ['"\\u0061"', '"a\\nb"', '"a\\"b"', '"\\ud83d\\ude00"', '"\\ud83d"', '"a\\/b"',
            '"\\u00e9"', '"tab\\tx"', '"\\x"', '"a\\bb\\fc\\rd"',
            '"\\uFFFF\\u0000\\u001f"', '"\\u00"']


def _edges() -> list[bytes]:
    out = [with_field("event_id", t) for t in
           [*_sized_strings(128), '""', "null", "1", "[]", *_ESCAPED]]
    out += [with_field("occurred_at", t) for t in _times()]
    out += [with_field("channel", t) for t in
            [*map(j, CHANNELS), '"Web"', '""', '"webb"', '"we"', "null", "1", '"web\\u0000"']]
    out += [with_field("touchpoint", t) for t in
            [*map(j, ["a", "a" * 64, "a" * 65, "a_1", "z9", "A", "1a", "_a", "a-b", "é", "", "aB"]),
             "null", '"a\\u0062"']]
    ids = [*(f'{{"{k}":{v}}}' for k in IDENTITY_KINDS for v in _sized_strings(512)),
           *(f'{{"{k}":{v}}}' for k in IDENTITY_KINDS for v in ('""', "null", "1", *_ESCAPED)),
           "{}", "null", "[]", '{"phone":"x"}', '{"email":"x","email":"y"}',
           '{"email":"x","anonymous_id":null}', '{"email":"x","phone":"y"}',
           "{" + ",".join(f'"{k}":"v-{k}"' for k in IDENTITY_KINDS) + "}",
           "{" + ",".join(f'"{k}":"v-{k}"' for k in reversed(IDENTITY_KINDS)) + "}"]
    out += [with_field("identities", t) for t in ids]
    out += [with_field("session_id", t) for t in
            [*_sized_strings(128), '""', "null", "7", *_ESCAPED]]
    out += [with_field("revenue", t) for t in [*_NUMBERS, "null", '"5"', "true"]]
    out += [with_field("text", t) for t in
            [*_sized_strings(10_000), '""', "null", "1", *_ESCAPED]]
    props = [f'{{"k":{v}}}' for v in
             [*_NUMBERS, '"x"', '""', "true", "false", "null", "[]", "{}", *_ESCAPED]]
    props += ["{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}" for n in (0, 1, 49, 50, 51)]
    props += [f"{{{k}:1}}" for k in [*_sized_strings(128), '""', *_ESCAPED]]
    props += ['{"a":1,"a":2}', '{"a":1,"b":1.0,"c":true,"d":null,"e":"x"}', "null", "[]", "1"]
    out += [with_field("properties", t) for t in props]
    out += [with_field("schema_version", t) for t in
            ["1", "1.0", "2", "0", '"1"', "true", "null", "01", "-1", "1e0", "10"]]
    out += [with_field(name, None) for name in _BASE]  # each required field missing
    base = with_field("text", None)
    out += [base + b" ", base + b"\n", b" \t\r\n" + base, base + b"x", base + b",", base + b"{}",
            base[:-1], base.replace(b",", b" , "), base.replace(b":", b" : "),
            base.replace(b'"channel"', b'"channel":"web","extra"'), base + b"\x0b",
            b"\xef\xbb\xbf" + base, base.replace(b"e-1", b"e-\xff"),
            base.replace(b"e-1", b"e-\xc3"), base.replace(b"e-1", b"e-\xed\xa0\x80"),
            base.replace(b"e-1", b"e\x00"), b"[]", b"", b"null", base.replace(b"{", b"[", 1)]
    return out


_EDGES = _edges()


def test_every_rule_edge_is_decided_alike() -> None:
    assert len(_EDGES) > 400
    assert_same_decisions(_EDGES)
    # and the native decoder is sure of a good share of them (the oracle is not vacuous)
    assert sum(map(native_sure, _EDGES)) > 150
    for raw in _EDGES:
        if native_sure(raw):
            python = decode(raw, engine="python")
            assert isinstance(python, Accepted), raw
            assert event_state(validation._NATIVE.decode(raw)) == event_state(python.event), raw


# -- drawn events around each rule's edges --------------------------------------------------

_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from("aé€😀\"\\/\n"),
    max_size=6,
)


def sized(n_chars: list[int]) -> st.SearchStrategy[str]:
    """Strings of about these lengths in code points, of 1 to 4 UTF-8 bytes per character."""
    return st.builds(lambda n, c: c * n, st.sampled_from(n_chars), st.sampled_from("aé€😀"))


_STR = _TEXT | sized([0, 1, 127, 128, 129])
_IDENTIFIER = _TEXT | sized([0, 1, 511, 512, 513])
_TOUCHPOINT = st.from_regex(r"[a-z][a-z0-9_]{0,64}", fullmatch=True) | st.sampled_from(
    ["", "A", "a-b", "1a", "a" * 64, "a" * 65, "signup\n", "é", "_a"]
)
_DIGITS = st.integers(0, 99).map(lambda n: f"{n:02d}")


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 and its neighbours: other separators, fraction lengths, offsets, impossible
    dates and times."""
    year = draw(st.sampled_from(["2026", "2024", "2023", "1970", "0001", "0000", "9999", "1900"]))
    month = draw(st.sampled_from(["01", "02", "04", "12", "13", "00"]))
    day = draw(st.sampled_from(["01", "28", "29", "30", "31", "32", "00"]))
    sep = draw(st.sampled_from(["T", "T", "t", " ", "_"]))
    hour = draw(st.sampled_from(["00", "12", "23", "24"]))
    minute = draw(st.sampled_from(["00", "59", "60"]))
    second = draw(st.sampled_from(["00", "59", "60"]))
    frac = draw(st.sampled_from(["", ".", ".1", ".12", ".123", ".123456", ".1234567", ".000"]))
    tz = draw(st.sampled_from(["Z", "Z", "z", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59",
                               "+24:00", "+00:60", "+0530", "+05", "", " Z", "Z "]))
    if draw(st.booleans()):
        return f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{frac}{tz}"
    # short forms and numbers in strings
    return draw(st.sampled_from([f"{year}-{month}-{day}", f"{year}-{month}-{day}T{hour}:{minute}",
                                 "1772000000000", " 1772000000000", "1e12", ""]))


_EPOCH = st.sampled_from([20_000_000_000, 20_000_000_001, 2**33 * 1000 - 1, 2**33 * 1000,
                          1_772_000_000_000, 0, -1, 19_999_999_999, 2**63, 2**64 + 5])
_TIME_TOKEN = (
    st.integers(20_000_000_000, 2**33 * 1000).map(str)
    | _EPOCH.map(str)
    | timestamps().map(lambda s: orjson.dumps(s).decode())
    | st.sampled_from(["1772000000000.0", "1.772e12", "-1772000000000", "true", "null"])
)
_NUMBER_TOKEN = st.sampled_from(
    ["0", "-0", "0.0", "-0.0", "1", "1.5", "1e2", "1E+2", "1e-7", "71.77", "-1", "-0.01",
     "1e400", "-1e400", "9007199254740993", "123456789012345678901234567890", "00", "1.",
     ".5", "+1", "NaN", "Infinity", "0x10", "1_000", "2.5e-324"]
) | st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.integers().map(str)


def value(s: Any, escaped: bool) -> str:
    """A JSON value's text: orjson's, or json's with every non-ASCII character escaped."""
    return json.dumps(s, ensure_ascii=True) if escaped else orjson.dumps(s).decode()


_GOOD_TEXT = st.text(st.characters(codec="utf-8", min_codepoint=0x20), min_size=1,
                     max_size=12)


@st.composite
def good_times(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return str(draw(st.integers(20_000_000_001, 2**33 * 1000 - 1)))
    at = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    digits = draw(st.integers(0, 6))
    frac = f".{at.microsecond:06d}"[: digits + 1] if digits else ""
    tz = draw(st.sampled_from(["Z", "+00:00", "+05:30", "-08:00", "+14:00", "-00:00"]))
    return f'"{at.year:04d}-{at:%m-%dT%H:%M:%S}{frac}{tz}"'


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """An event message, each field usually valid (often absent where optional), sometimes an
    edge of its rule or something else: mostly valid messages, and invalid ones of every
    kind."""
    def one_in(n: int) -> bool:  # (hypothesis draws integers near their bounds more often)
        return bool(draw(st.sampled_from([False] * (n - 1) + [True])))

    esc = one_in(5)  # every non-ASCII character as a \u escape
    fields: list[tuple[str, str]] = []

    def field(name: str, good: st.SearchStrategy[str], edge: st.SearchStrategy[str],
              p_absent: float = 0.0) -> None:
        n_absent = round(p_absent * 10)
        roll = draw(st.sampled_from(["good"] * (11 - n_absent) + ["absent"] * n_absent
                                    + ["edge"]))
        if roll != "absent":
            fields.append((name, draw(edge if roll == "edge" else good)))

    def strings(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return strategy.map(lambda s: value(s, esc))

    field("event_id", strings(_GOOD_TEXT | sized([1, 128])),
          strings(_STR) | st.sampled_from(["null", "1"]))
    field("occurred_at", good_times(), _TIME_TOKEN)
    field("channel", strings(st.sampled_from(CHANNELS)),
          strings(st.sampled_from(["Web", "", "webb", "e"])) | st.just("null"))
    field("touchpoint", strings(st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)),
          strings(_TOUCHPOINT))
    good_ids = st.lists(st.tuples(st.sampled_from(IDENTITY_KINDS), strings(_GOOD_TEXT)),
                        min_size=1, max_size=4, unique_by=lambda kv: kv[0])
    kinds = st.sampled_from([*IDENTITY_KINDS, "phone", "Email"])
    ident_value = strings(_IDENTIFIER) | st.sampled_from(["null", "5", "[]"])
    any_ids = st.lists(st.tuples(kinds, ident_value), max_size=6)
    field("identities", st.one_of(good_ids, good_ids, good_ids, any_ids).map(
        lambda kv: "{" + ",".join(f'"{k}":{v}' for k, v in kv) + "}"
    ), st.sampled_from(["null", "[]", '"a"', "{}"]))
    field("session_id", strings(_GOOD_TEXT) | st.just("null"),
          strings(_STR) | st.just("7"), 0.5)
    field("revenue", st.floats(0, 1e9).map(repr) | st.integers(0, 10**6).map(str)
          | st.just("null"), _NUMBER_TOKEN | st.sampled_from(['"5"', "true"]), 0.6)
    field("text", strings(st.text(max_size=30)) | st.just("null"),
          strings(_STR | sized([9_999, 10_000, 10_001])) | st.just("1"), 0.6)
    prop_value = st.one_of(
        strings(st.text(max_size=8)), st.integers(-(2**63), 2**63).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["true", "false", "null"]),
    )
    good_props = st.dictionaries(strings(st.text(max_size=8)), prop_value, max_size=5).map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv.items()) + "}"
    )
    edge_value = st.one_of(prop_value, strings(_STR), _NUMBER_TOKEN,
                           st.sampled_from(["[]", "{}", '{"a":1}']))
    prop_key = strings(_STR) | st.sampled_from(['"plan"', '"currency"'])
    edge_props = st.builds(
        lambda n, k, v: "{" + ",".join(
            [f'"k{i}":1' for i in range(n)]
            + [f"{kk}:{vv}" for kk, vv in zip(k, v, strict=False)]
        ) + "}",
        st.sampled_from([0, 1, 48, 49, 50, 51]), st.lists(prop_key, max_size=3),
        st.lists(edge_value, max_size=3),
    ) | st.sampled_from(["[]", "1"])
    field("properties", good_props | st.just("null"), edge_props, 0.6)
    field("schema_version", st.just("1"),
          st.sampled_from(["1.0", "2", '"1"', "true", "null", "01", "-1", "1e0"]), 0.7)
    if one_in(20):
        fields.append(("unknown", "1"))
    if fields and one_in(20):  # a key twice
        fields.append(draw(st.sampled_from(fields)))
    order = draw(st.permutations(range(len(fields))))
    space = draw(st.sampled_from([""] * 6 + [" ", "\n", "\t ", "\r\n"]))
    body = ("," + space).join(f'"{fields[i][0]}"{space}:{space}{fields[i][1]}' for i in order)
    tail = draw(st.sampled_from([""] * 12 + [" ", "\n", "x", ",", "\x0b"]))
    return ("{" + space + body + space + "}" + tail).encode()


_BYTES = st.sampled_from([b'"', b"\\", b",", b"}", b"{", b"0", b"9", b" ", b"\x00", b"\xc3",
                          b"\xa9", b"\xff", b"e", b"-", b"."])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A simulator line with a byte deleted, inserted or replaced."""
    line = draw(st.sampled_from(_SIMULATED))
    at = draw(st.integers(0, len(line)))
    kind = draw(st.sampled_from(["delete", "insert", "replace"]))
    if kind == "delete":
        return line[:at] + line[at + 1:]
    b = draw(_BYTES)
    return line[:at] + b + line[at + (kind == "replace"):]


_BATCH = st.lists(messages() | mutated() | st.sampled_from(_SIMULATED), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BATCH)
@example([b'{"event_id":"e","occurred_at":20000000001,"channel":"web","touchpoint":"a",'
          b'"identities":{"email":"x"}}'])
@example([b'{"event_id":"e","occurred_at":"2024-02-29T23:59:59.999999-00:00","channel":"ads",'
          b'"touchpoint":"a","identities":{"user_id":"\xc3\xa9"},"revenue":-0.0,'
          b'"properties":{"a":1,"b":1.0,"c":true,"d":null,"e":"x"},"schema_version":1}'])
def test_native_and_python_engines_decide_alike(raws: list[bytes]) -> None:
    assert_same_decisions(raws)


@settings(max_examples=300, deadline=None)
@given(messages())
def test_what_the_native_path_accepts_the_model_accepts_alike(raw: bytes) -> None:
    """One message at a time, straight at the native decoder: when it is sure, the model
    accepts the message with an equal event (the batch test would hide nothing, but this one
    says which message)."""
    event = validation._NATIVE.decode(raw)
    if event is None:
        return
    python = decode(raw, engine="python")
    assert isinstance(python, Accepted), (raw, python)
    assert event_state(event) == event_state(python.event), raw


_EXACT_US = 2**53  # epoch microseconds a float holds exactly


@settings(max_examples=300, deadline=None)
@given(good_times())
@example('"0001-01-02T00:00:00Z"')
@example('"9999-12-30T23:59:59.999999-08:00"')
@example('"2255-06-05T23:47:34.740991Z"')  # the last microsecond below 2**53
@example('"2255-06-05T23:47:34.740992Z"')
@example('"1969-12-31T23:59:59.999999+00:00"')
@example('"1900-03-01T00:00:00.000001-00:00"')
def test_ts_ms_comes_cached_where_it_is_exact(at: str) -> None:
    """The native path puts the event's `ts_ms` in its dict at once, after the fields (where
    its first read would), wherever the float arithmetic is exact; elsewhere the model computes
    it on first read. Either way the dict is then the Python engine's, item for item."""
    raw = with_field("occurred_at", at)
    event = validation._NATIVE.decode(raw)
    assert event is not None, raw
    python = decode(raw, engine="python")
    assert isinstance(python, Accepted)
    reference = python.event.occurred_at
    delta = reference - datetime(1970, 1, 1, tzinfo=UTC)
    exact = abs(delta // timedelta(microseconds=1)) < _EXACT_US
    assert ("ts_ms" in event.__dict__) is exact, raw
    if exact:
        assert event.__dict__["ts_ms"] == int(reference.timestamp() * 1000)
    assert event.ts_ms == python.event.ts_ms  # (the reads cache it in both)
    assert [(k, type(v), v) for k, v in event.__dict__.items()] == \
        [(k, type(v), v) for k, v in python.event.__dict__.items()]


def test_the_fast_path_takes_the_common_shapes() -> None:
    """Not a vacuous oracle: ordinary events of every shape are decided natively."""
    common = [
        b'{"event_id":"a","occurred_at":"2026-03-01T12:00:00.123Z","channel":"web",'
        b'"touchpoint":"pricing_page","identities":{"anonymous_id":"x"}}',
        b'{"event_id":"a","occurred_at":"2026-03-01T12:00:00+05:30","channel":"app",'
        b'"touchpoint":"t","identities":{"device_id":"d","user_id":"u"},"session_id":"s",'
        b'"revenue":12,"text":"\xc3\xa9t\xc3\xa9","properties":{"plan":"pro","n":3,"x":1.5,'
        b'"ok":false,"none":null},"schema_version":1}',
        b'{ "event_id" : "a" , "occurred_at" : 1772000000000 , "channel" : "email" ,\n'
        b' "touchpoint" : "t" , "identities" : { "email" : "e@x" } , "session_id" : null }\n',
    ]
    assert all(map(native_sure, common))
    assert_same_decisions(common)
    escaped = common[0].replace(b'"a"', b'"\\u0061\\n\\"\\u00e9"', 1)
    assert native_sure(escaped)  # escapes in values are decoded natively
    assert_same_decisions([escaped])
    assert not native_sure(common[0].replace(b'"event_id"', b'"\\u0065vent_id"'))  # in keys: not


# -- decode_events: the chain's columns ---------------------------------------------------------


def test_decode_events_takes_any_sequence_of_pairs_and_unpacks_as_decode_batch() -> None:
    raws = [*_SIMULATED[:5], b'{"event_id": 1}']
    pairs = tuple((raw, Source("t", 0, i)) for i, raw in enumerate(raws))
    events, at, dead = decode_events(pairs, "native")
    assert list(at) == [0, 1, 2, 3, 4] and [d.source.offset for d in dead] == [5]
    assert [e.event_id for e in events] == [a.event.event_id for a in decode_batch(pairs)[0]]
    assert decode_events((), "native") == ([], range(0), [])
    # the native decoder is not sure of what is not a pair of bytes and a source ...
    found, unsure = validation._NATIVE.decode_pairs(
        [(raws[0], None), raws[0], (raws[0],), ("text", None), (raws[0], None, 1), [raws[0], 0]]
    )
    assert unsure == [1, 2, 3, 4, 5] and type(found[0]) is TouchpointEvent
    # ... and a batch with one raises what decode_batch raises
    for bad in ([(raws[0], Source(), 1)], [raws[0]]):
        for engine in ("native", "python"):
            with pytest.raises(ValueError):
                decode_batch(bad, engine)
            with pytest.raises(ValueError):
                decode_events(bad, engine)


def test_native_events_share_their_tzinfo_and_fields_set_and_stay_apart() -> None:
    """Events with one UTC offset share one `TzInfo`, and events with the same fields one
    fields set (pydantic-core makes a fresh one each): equal to the Python engine's in every
    way, and a copy with an update gets a set of its own."""
    raws = [
        b'{"event_id":"a","occurred_at":"2026-01-01T00:00:00Z","channel":"web",'
        b'"touchpoint":"x","identities":{"user_id":"u"}}',
        b'{"event_id":"b","occurred_at":1767225600000,"channel":"web",'
        b'"touchpoint":"x","identities":{"user_id":"u"}}',
        b'{"event_id":"c","occurred_at":"2026-01-01T02:00:00+02:00","channel":"web",'
        b'"touchpoint":"x","identities":{"user_id":"u"},"text":"hi"}',
    ]
    a, b, c = (validation._NATIVE.decode(raw) for raw in raws)
    assert a.occurred_at.tzinfo is b.occurred_at.tzinfo
    assert c.occurred_at.utcoffset() == timedelta(hours=2)
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert c.__pydantic_fields_set__ == a.__pydantic_fields_set__ | {"text"}
    copied = a.model_copy(update={"text": "later"})
    assert "text" in copied.model_fields_set and "text" not in b.model_fields_set
    for raw, event in zip(raws, (a, b, c), strict=True):
        python = decode(raw, engine="python")
        assert isinstance(python, Accepted)
        assert event_state(event) == event_state(python.event)
        assert event.occurred_at == python.event.occurred_at


def test_values_put_in_place_leave_the_template_and_other_events_alone() -> None:
    """The decoder puts each value straight into its copy of the model's template: another
    event's values, and the defaults of the fields an event does not have, stay as they were."""
    full = (b'{"event_id":"a","occurred_at":"2026-01-01T00:00:00Z","channel":"web",'
            b'"touchpoint":"x","identities":{"user_id":"u"},"session_id":"s","revenue":2.5,'
            b'"text":"hi","properties":{"k":1}}')
    bare = (b'{"event_id":"b","occurred_at":"2026-01-01T00:00:01Z","channel":"app",'
            b'"touchpoint":"y","identities":{"device_id":"d"}}')
    first = validation._NATIVE.decode(full)
    before = dict(first.__dict__)
    second = validation._NATIVE.decode(bare)
    assert first.__dict__ == before
    assert (second.session_id, second.revenue, second.text, second.properties) == (
        None, None, None, None)
    assert second.__dict__ is not first.__dict__
    for raw, event in ((full, first), (bare, second)):
        python = decode(raw, engine="python")
        assert isinstance(python, Accepted)
        assert [(k, type(v), v) for k, v in event.__dict__.items() if k != "ts_ms"] == \
            [(k, type(v), v) for k, v in python.event.__dict__.items()]
        assert event.__dict__["ts_ms"] == python.event.ts_ms  # (cached by the decoder)


def test_strings_are_read_alike_whatever_their_length_and_where_a_special_byte_sits() -> None:
    """The native reader scans strings 8 bytes at a time up to the first quote, backslash,
    control or non-ASCII byte, and makes ASCII strings of two or more characters directly: a
    special byte at every place of the first words of a value or a key, strings of every short
    length, and keys that begin like a field's, all decided and built as the model does."""
    raws: list[bytes] = []
    specials = ['\\"', "\\\\", "\\n", "\\u00e9", "\\u0000", "\x01", "\x1f", " ", "\x7f", "é", "😀"]
    for at in range(18):
        for special in specials:
            text = "x" * at + special + "y" * (17 - at)
            raws.append(with_field("event_id", f'"{text}"'))
            raws.append(with_field("identities", f'{{"user_id":"{text}"}}'))
            raws.append(with_field("text", f'"{text}"'))
            raws.append(with_field("touchpoint", f'"{text}"'))
    for n in range(0, 20):
        raws.append(with_field("event_id", j("e" * n)))
        raws.append(with_field("session_id", j("s" * n)))
        raws.append(with_field("properties", j({"k" * n: "v" * n})))
        raws.append(with_field("identities", j({"email": "é" * n})))
    body = with_field("session_id", j("s-1")).decode()
    for key in ('"event_i"', '"event_idx"', '"event_id\\u0000"', '"Event_id"', '"session_id" '):
        raws.append(body.replace('"event_id"', key, 1).encode())
    last = body.replace('"event_id":"e-1",', "", 1)[:-1]
    raws.append((last + ',"event_id":"e-1"}').encode())  # out of order
    raws.append((body[:-1] + ',"event_id":"e-2"}').encode())  # twice
    raws.append(body.encode()[:-1] + b"\x20\x20}")
    assert_same_decisions(raws)
    sure = [raw for raw in raws if native_sure(raw)]
    assert len(sure) > len(raws) // 3  # (the fast path reads most of them itself)
    for raw in sure:
        python = decode(raw, engine="python")
        assert isinstance(python, Accepted), raw
        assert event_state(validation._NATIVE.decode(raw)) == event_state(python.event), raw


def test_touchpoints_are_interned_up_to_the_limit_and_read_alike_past_it() -> None:
    """One `str` per touchpoint for the first 4096 distinct ones (a table of recent ones in
    front of the map; many share a place in it), a fresh one each time past them."""
    decoder = validation._native_decoder()
    names = [f"t{i}" for i in range(4200)]
    raws = [with_field("touchpoint", j(name)) for name in names]
    first, unsure = decoder.decode_many(raws)
    again, _ = decoder.decode_many(raws[::-1])
    assert unsure == []
    assert [e.touchpoint for e in first] == names
    assert [e.touchpoint for e in again] == names[::-1]
    same = [a.touchpoint is b.touchpoint for a, b in zip(first, again[::-1], strict=True)]
    assert same == [True] * 4096 + [False] * 104
