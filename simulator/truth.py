"""The ground truth of a simulation, as typed values, and its file format.

The truth file is JSON Lines (gzip-compressed when its name ends in ``.gz``):

* line 1, ``{"kind": "meta", ...}``: seed, time range, segments and their matrices, the drift,
  the delivery faults (duplicates, delays, lateness) and the junk identifier values;
* then one ``{"kind": "customer", ...}`` line per customer, with its events in event-time order
  as arrays ``[event_id, touchpoint, channel, ts_ms, sentiment, revenue]``.

:func:`load_truth` reads it back into :class:`Truth`. Tests of the processors and models use it
as the oracle (identity components, transition recounts, segment recovery, drift delay, ...).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import orjson

FORMAT_VERSION: Final = 1
Outcome = Literal["conversion", "churn", "null"]


class TrueEvent(NamedTuple):
    """One event as it really happened (each event once, in event time).

    A named tuple, not a dataclass: there is one per event, so it must be cheap and small.
    """

    event_id: str
    touchpoint: str
    channel: str
    ts_ms: int
    sentiment: str | None = None  # negative | neutral | positive, on texts only
    revenue: float | None = None  # on purchase only

    def to_row(self) -> list[Any]:
        return list(self)


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    """One real customer, everything they did, and every identifier they used."""

    customer_id: str
    segment: str
    events: tuple[TrueEvent, ...]
    outcome: Outcome
    revenue: float  # 0.0 unless converted
    # kind -> canonical values (emails lower-cased and stripped); junk values excluded
    identifiers: dict[str, tuple[str, ...]]
    # the raw spellings of the email that appear in the events (case, whitespace)
    email_variants: tuple[str, ...]
    # identifiers linkable through events that carry several of them ("kind:value", canonical):
    # a perfect resolver ends with exactly these components for this customer.
    fragments: tuple[tuple[str, ...], ...]
    signed_up: bool
    censored: bool  # the journey was cut by the end of the date range

    @property
    def touchpoints(self) -> list[str]:
        return [e.touchpoint for e in self.events]

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": "customer",
            "customer_id": self.customer_id,
            "segment": self.segment,
            "outcome": self.outcome,
            "revenue": self.revenue,
            "signed_up": self.signed_up,
            "censored": self.censored,
            "identifiers": {k: list(v) for k, v in self.identifiers.items()},
            "email_variants": list(self.email_variants),
            "fragments": [list(f) for f in self.fragments],
            "events": [e.to_row() for e in self.events],
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> CustomerTruth:
        return cls(
            customer_id=rec["customer_id"],
            segment=rec["segment"],
            events=tuple(TrueEvent(*row) for row in rec["events"]),
            outcome=rec["outcome"],
            revenue=rec["revenue"],
            identifiers={k: tuple(v) for k, v in rec["identifiers"].items()},
            email_variants=tuple(rec["email_variants"]),
            fragments=tuple(tuple(f) for f in rec["fragments"]),
            signed_up=rec["signed_up"],
            censored=rec["censored"],
        )


@dataclass(frozen=True, slots=True)
class SegmentTruth:
    """A segment's generating process: its share and its Markov matrix (src -> dst -> p)."""

    name: str
    share: float
    description: str
    matrix: dict[str, dict[str, float]]
    revenue_median: float
    sentiment_p: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class DriftTruth:
    """From `at_ms` on, `segment` follows a changed matrix: changes[src][dst] = (before, after)."""

    segment: str
    at_ms: int
    description: str
    changes: dict[str, dict[str, tuple[float, float]]]


@dataclass(frozen=True, slots=True)
class DeliveryTruth:
    """What the file order does to the events: the faults a pipeline must absorb.

    `duplicates`: events delivered twice (same event_id, same bytes; the later line is the copy).
    `delayed`: event_id -> how long its (first) delivery was held back, ms.
    `lateness_ms`: event_id -> max event time already in the file when the event's first copy
    arrives, minus its own event time (only events with lateness > 0).
    `beyond_allowed_lateness`: the events whose lateness exceeds `allowed_lateness_ms`.
    """

    duplicates: tuple[str, ...]
    delayed: dict[str, int]
    lateness_ms: dict[str, int]
    beyond_allowed_lateness: tuple[str, ...]
    allowed_lateness_ms: int
    n_lines: int


@dataclass(frozen=True, slots=True)
class Truth:
    """Everything the simulation knows and the event file does not say."""

    seed: int
    start_ms: int
    end_ms: int
    segments: dict[str, SegmentTruth]
    drift: DriftTruth | None
    delivery: DeliveryTruth
    junk_values: tuple[str, ...]
    customers: tuple[CustomerTruth, ...]
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_events(self) -> int:
        return sum(len(c.events) for c in self.customers)

    def customer_of_event(self) -> dict[str, str]:
        """event_id -> true customer id."""
        if "by_event" not in self._cache:
            self._cache["by_event"] = {
                e.event_id: c.customer_id for c in self.customers for e in c.events
            }
        return self._cache["by_event"]  # type: ignore[no-any-return]

    def customer(self, customer_id: str) -> CustomerTruth:
        if "by_id" not in self._cache:
            self._cache["by_id"] = {c.customer_id: c for c in self.customers}
        return self._cache["by_id"][customer_id]  # type: ignore[no-any-return]

    def events(self) -> Iterator[tuple[CustomerTruth, TrueEvent]]:
        for c in self.customers:
            for e in c.events:
                yield c, e

    def meta_record(self) -> dict[str, Any]:
        d = self.delivery
        return {
            "kind": "meta",
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "n_customers": len(self.customers),
            "segments": {
                s.name: {
                    "share": s.share,
                    "description": s.description,
                    "matrix": s.matrix,
                    "revenue_median": s.revenue_median,
                    "sentiment_p": list(s.sentiment_p),
                }
                for s in self.segments.values()
            },
            "drift": None
            if self.drift is None
            else {
                "segment": self.drift.segment,
                "at_ms": self.drift.at_ms,
                "description": self.drift.description,
                "changes": {
                    src: {dst: list(ba) for dst, ba in row.items()}
                    for src, row in self.drift.changes.items()
                },
            },
            "delivery": {
                "duplicates": list(d.duplicates),
                "delayed": d.delayed,
                "lateness_ms": d.lateness_ms,
                "beyond_allowed_lateness": list(d.beyond_allowed_lateness),
                "allowed_lateness_ms": d.allowed_lateness_ms,
                "n_lines": d.n_lines,
            },
            "junk_values": list(self.junk_values),
        }

    def to_jsonl(self) -> Iterator[bytes]:
        """The truth file, line by line (each line ends in a newline)."""
        yield orjson.dumps(self.meta_record()) + b"\n"
        for c in self.customers:
            yield orjson.dumps(c.to_record()) + b"\n"


def _truth_from(meta: dict[str, Any], customers: list[CustomerTruth]) -> Truth:
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"truth format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    drift = meta["drift"]
    d = meta["delivery"]
    return Truth(
        seed=meta["seed"],
        start_ms=meta["start_ms"],
        end_ms=meta["end_ms"],
        segments={
            name: SegmentTruth(
                name=name,
                share=s["share"],
                description=s["description"],
                matrix=s["matrix"],
                revenue_median=s["revenue_median"],
                sentiment_p=tuple(s["sentiment_p"]),  # type: ignore[arg-type]
            )
            for name, s in meta["segments"].items()
        },
        drift=None
        if drift is None
        else DriftTruth(
            segment=drift["segment"],
            at_ms=drift["at_ms"],
            description=drift["description"],
            changes={
                src: {dst: (ba[0], ba[1]) for dst, ba in row.items()}
                for src, row in drift["changes"].items()
            },
        ),
        delivery=DeliveryTruth(
            duplicates=tuple(d["duplicates"]),
            delayed=d["delayed"],
            lateness_ms=d["lateness_ms"],
            beyond_allowed_lateness=tuple(d["beyond_allowed_lateness"]),
            allowed_lateness_ms=d["allowed_lateness_ms"],
            n_lines=d["n_lines"],
        ),
        junk_values=tuple(meta["junk_values"]),
        customers=tuple(customers),
    )


def parse_truth(lines: Iterator[bytes] | list[bytes]) -> Truth:
    """The truth from its JSON lines (any order of meta and customer lines)."""
    meta: dict[str, Any] | None = None
    customers: list[CustomerTruth] = []
    for line in lines:
        if not line.strip():
            continue
        rec = orjson.loads(line)
        if rec["kind"] == "meta":
            meta = rec
        elif rec["kind"] == "customer":
            customers.append(CustomerTruth.from_record(rec))
    if meta is None:
        raise ValueError("truth has no meta line; is this a journeymap truth file?")
    return _truth_from(meta, customers)


def truth_path_for(events_path: str | Path) -> Path:
    """Where the truth of an event file lives: `x.jsonl` -> `x.truth.jsonl` (`.gz` kept)."""
    p = Path(events_path)
    name = p.name
    gz = name.endswith(".gz")
    base = name.removesuffix(".gz")
    base = base.removesuffix(".jsonl").removesuffix(".json")
    return p.with_name(base + ".truth.jsonl" + (".gz" if gz else ""))


def load_truth(path: str | Path) -> Truth:
    """Read a truth file (plain or gzip, by content). Also accepts the events file's path."""
    p = Path(path)
    if ".truth." not in p.name:
        p = truth_path_for(p)
    with p.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(p, "rb") as fh:  # type: ignore[operator]
        return parse_truth(iter(fh))
