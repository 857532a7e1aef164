"""Per-customer journey state: sessions, Markov steps, outcomes, dedup and lateness.

:class:`JourneyProcessor` turns batches of :class:`~processors.events.ResolvedEvent` into
:class:`Step` records (one Markov transition each) and keeps a small state per customer.

Markov states. A journey starts at ``start``; a conversion touchpoint (``OutcomesConfig``) is the
transition ``prev -> conversion``; a churn touchpoint is ``prev -> null``; a journey with no event
for ``null_horizon_s`` ends with ``last -> null`` at event time ``last_ts + horizon``. Both
``conversion`` and ``null`` are absorbing: the customer's next event begins a *new* journey at
``start`` (``journey_no`` counts them). Second-order context is ``prev2``; it is ``""`` on the
first step of a journey, so second-order counts begin at ``(start, a) -> b``.

Time. The partition watermark is the largest event time seen (or given); the *frontier* is the
watermark minus ``allowed_lateness_s``. An event older than the frontier is not applied and comes
back in :attr:`JourneyOutput.late`. Within the lateness we insert in order and correct: every
customer keeps its recent events (``history``: all events at or after the frontier, and at least
the last ``last_touchpoints_kept``); an out-of-order event is inserted at its place and the steps
from there on are recomputed, emitted as retractions (``sign=-1``) and additions (``sign=+1``)
whose sum equals in-order delivery exactly. Events are ordered by ``(ts_ms, hash(event_id))``, so
ties are broken the same way whatever the arrival order. Outputs go out at once (no buffering
delay), which serving needs; out-of-order events cost a few extra steps.

Dedup. The last ``dedup_ids_per_customer`` event ids of each customer are remembered as 8-byte
BLAKE2b digests in one ``bytearray``: 8 bytes per id, 512 bytes at the default 64. A duplicate is
returned in :attr:`JourneyOutput.duplicates` and counts once.

Merges. :meth:`JourneyProcessor.merge` recombines two customers' kept histories in event-time
order and returns the count corrections. Only events after the later of the two histories' starts
are recombined (at least the last ``last_touchpoints_kept`` events of each); older transitions
keep the customer they were counted under.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from processors.config import ProcessingConfig
from processors.events import ResolvedEvent

START: Final = "start"
CONVERSION: Final = "conversion"
NULL: Final = "null"
DIGEST_BYTES: Final = 8
DUE_BUCKET_MS: Final = 3_600_000  # granularity of the index of journeys by null deadline


class Step(NamedTuple):
    """One Markov transition of one customer: what the transition counter and the sink consume.

    `touchpoint` is the event's own touchpoint, ``""`` for a null-horizon expiry. `channel` and
    `segment` are those of the event the customer moved to (of the last event for an expiry).
    `gap_ms` is the time since the previous touchpoint in the journey (0 from ``start``).
    `sign` is +1 for an applied step and -1 for the retraction of one emitted before.
    `event_id` is the id of the event the customer moved to (``""`` for an expiry), so the sink
    can write each touchpoint's computed session.
    """

    customer_id: str
    segment: str
    channel: str
    touchpoint: str
    src: str
    dst: str
    prev2: str
    gap_ms: int
    ts_ms: int
    session_id: str
    is_new_session: bool
    revenue: float
    journey_no: int
    sign: int = 1
    event_id: str = ""


class Entry(NamedTuple):
    """The fields of one applied event as the customer's history keeps it (no payload, no text).

    The history holds them as plain tuples in this field order (:data:`HistoryEntry`): the
    garbage collector stops tracking a plain tuple of strings and numbers, never a NamedTuple,
    and a large replay keeps millions of them. Entries are ordered by
    ``(ts_ms, event_digest(event_id))``; the digest is computed only on the rare paths that need
    it (a tie in time, an out-of-order insert, a merge).
    """

    ts_ms: int
    event_id: str
    touchpoint: str
    channel: str
    session_id: str | None
    segment: str
    revenue: float


HistoryEntry = tuple[int, str, str, str, str | None, str, float]  # the fields of Entry
_TS: Final = 0
_ID: Final = 1
_TP: Final = 2
_CH: Final = 3


class Cursor(NamedTuple):
    """The walk state after some prefix of a customer's events (``last_ts_ms = -1``: none)."""

    last_ts_ms: int = -1
    is_open: bool = False
    src: str = START
    prev2: str = ""
    session_id: str = ""
    session_start_ms: int = -1
    journey_no: int = 0
    channel: str = ""
    segment: str = ""


_EMPTY: Final = Cursor()
# Building the records with tuple.__new__ skips the Python-level NamedTuple.__new__ frame: the
# hot path makes three records per event and this halves their cost.
_new = tuple.__new__


@dataclass(slots=True)
class CustomerState:
    """Everything kept per customer: small plain data that pickles (see docs/journey-map.md)."""

    seen: bytearray = field(default_factory=bytearray)  # ring of event-id digests
    seen_pos: int = 0
    base: Cursor = _EMPTY  # state before history[0]
    cur: Cursor = _EMPTY  # state after history[-1] (and after any expiry)
    history: list[HistoryEntry] = field(default_factory=list)
    n_events: int = 0
    n_sessions: int = 0
    n_support: int = 0
    n_conversions: int = 0
    n_churns: int = 0
    n_expired: int = 0
    revenue: float = 0.0
    first_ts_ms: int = -1
    by_channel: dict[str, int] = field(default_factory=dict)

    def __getstate__(self) -> tuple[object, ...]:
        # A bare tuple: no field names in every pickled customer (saves ~200 bytes each); the
        # records as plain tuples with interned strings, so a repeated touchpoint, channel or
        # segment is pickled once (the hot path does not intern: this runs only when storing).
        state = [getattr(self, name) for name in self.__slots__]
        state[2] = _plain(self.base)
        state[3] = _plain(self.cur)
        state[4] = [_plain(e) for e in self.history]
        return tuple(state)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            object.__setattr__(self, name, value)
        self.base = _new(Cursor, self.base)
        self.cur = _new(Cursor, self.cur)


def _plain(record: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(sys.intern(x) if type(x) is str else x for x in record)


@dataclass(frozen=True, slots=True)
class CustomerSnapshot:
    """One customer's live journey state, for serving (Redis) and the models."""

    customer_id: str
    last_touchpoints: list[tuple[int, str, str]]  # (ts_ms, touchpoint, channel), oldest first
    markov_state: str  # the last state: a touchpoint, `start` (none yet), `conversion`, `null`
    journey_open: bool
    journey_no: int
    session_id: str
    session_start_ms: int
    first_seen_ms: int
    last_seen_ms: int
    since_previous_ms: int  # time between the last two touchpoints, -1 with fewer than two
    n_events: int
    n_sessions: int
    n_support: int
    n_conversions: int
    n_churns: int
    n_expired: int
    revenue: float
    by_channel: dict[str, int]


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event older than the frontier: not applied, routed to the late-events output."""

    event: ResolvedEvent
    watermark_ms: int
    frontier_ms: int
    reason: str = "older than the watermark minus the allowed lateness"


@dataclass(slots=True)
class JourneyOutput:
    """What one call produced: signed steps, late and duplicate events, the customers changed."""

    steps: list[Step] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    duplicates: list[ResolvedEvent] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)


# An empty BLAKE2b state with the digest size set: copying it and feeding the id costs less than
# half of building a new hasher with keyword parameters, for the same digest.
_BLAKE2B_8: Final = hashlib.blake2b(digest_size=DIGEST_BYTES)


def event_digest(event_id: str) -> bytes:
    """A stable 8-byte digest of an event id (stable across processes, unlike `hash`)."""
    h = _BLAKE2B_8.copy()
    h.update(event_id.encode())
    return h.digest()


def _order(e: HistoryEntry) -> tuple[int, bytes]:
    """The event-time order of history entries; ties broken by the digest of the id."""
    return e[_TS], event_digest(e[_ID])


def _net(retracted: list[Step], added: list[Step]) -> list[Step]:
    """Additions and retractions that differ: identical steps cancel (nothing goes out)."""
    diff = Counter(added)
    diff.subtract(retracted)
    out = [st for st, n in diff.items() if n > 0 for _ in range(n)]
    out += [st._replace(sign=-1) for st, n in diff.items() if n < 0 for _ in range(-n)]
    return out


class JourneyProcessor:
    """Per-customer journeys over batches of resolved events (one instance per partition).

    `customers` is the whole state (a dict of :class:`CustomerState`, picklable); the streaming
    worker keeps it in a table, the replay in memory. Call :meth:`expire` as the watermark
    moves (e.g. once per window step) to end idle journeys in ``null`` and fold old history.
    """

    def __init__(self, config: ProcessingConfig) -> None:
        journey = config.journey
        self.session_gap_ms = journey.session_gap_s * 1000
        self.lateness_ms = journey.allowed_lateness_ms
        self.kept = journey.last_touchpoints_kept
        self.dedup_bytes = journey.dedup_ids_per_customer * DIGEST_BYTES
        self.horizon_ms = config.outcomes.null_horizon_s * 1000
        self.conversion = frozenset(config.outcomes.conversion)
        self.churn = frozenset(config.outcomes.churn)
        # touchpoint -> Markov state, for the outcomes only (others map to themselves).
        self._outcome = {tp: CONVERSION for tp in self.conversion}
        self._outcome.update((tp, NULL) for tp in self.churn)
        self.customers: dict[str, CustomerState] = {}
        self.watermark_ms = -(2**62)
        # Open journeys by the hour their null horizon falls due: derived from `customers`
        # (rebuild with `reindex()` after replacing them), so `expire` touches only those due.
        self._due: dict[int, set[str]] = {}

    # -- the walk: a pure function of (cursor, entry) -------------------------------------

    def _walk(self, cid: str, cur: Cursor, e: HistoryEntry, out: list[Step] | None) -> Cursor:
        """The cursor after `e`, appending its step(s) to `out` (an expiry may precede it).

        :meth:`apply` inlines this for the in-order case; the two must stay the same walk.
        """
        last_ts, is_open, src, prev2, sess, sess_start, jno, _, _ = cur
        ts, eid, tp, channel, given, segment, revenue = e
        if is_open and ts - last_ts >= self.horizon_ms:
            if out is not None:
                out.append(self._expiry_step(cid, cur))
            is_open = False
        if not is_open:
            jno += 1
            src = START
            prev2 = ""
        if given is not None:
            is_new = given != sess or last_ts < 0
            session = given
        elif last_ts >= 0 and ts - last_ts <= self.session_gap_ms:
            is_new = False
            session = sess
        else:
            is_new = True
            session = f"{cid}/{ts}"
        if is_new:
            sess_start = ts
        dst = self._outcome.get(tp, tp)
        if out is not None:
            gap = 0 if src == START else ts - last_ts
            out.append(_new(Step, (cid, segment, channel, tp, src, dst, prev2, gap, ts, session,
                                   is_new, revenue, jno, 1, eid)))
        return _new(Cursor, (ts, dst != CONVERSION and dst != NULL, dst, src, session, sess_start,
                             jno, channel, segment))

    def _expiry_step(self, cid: str, cur: Cursor) -> Step:
        return Step(cid, cur.segment, cur.channel, "", cur.src, NULL, cur.prev2, self.horizon_ms,
                    cur.last_ts_ms + self.horizon_ms, cur.session_id, False, 0.0, cur.journey_no)

    def _replay(self, cid: str, cur: Cursor, entries: Iterable[HistoryEntry],
                out: list[Step] | None) -> Cursor:
        for e in entries:
            cur = self._walk(cid, cur, e, out)
        return cur

    # -- counters -----------------------------------------------------------------------------

    @staticmethod
    def _count(s: CustomerState, step: Step, sign: int) -> None:
        if step.touchpoint:
            s.n_events += sign
            ch = step.channel
            n = s.by_channel.get(ch, 0) + sign
            if n:
                s.by_channel[ch] = n
            else:
                del s.by_channel[ch]
            if ch == "support":
                s.n_support += sign
            if step.is_new_session:
                s.n_sessions += sign
            if step.revenue:
                s.revenue += sign * step.revenue
            if step.dst == CONVERSION:
                s.n_conversions += sign
            elif step.dst == NULL:
                s.n_churns += sign
        else:
            s.n_expired += sign

    def _emit(self, s: CustomerState, steps: list[Step], out: JourneyOutput) -> None:
        for step in steps:
            self._count(s, step, step.sign)
        out.steps.extend(steps)

    # -- the public API -------------------------------------------------------------------

    @property
    def frontier_ms(self) -> int:
        """Events before this event time are late: the watermark minus the allowed lateness."""
        return self.watermark_ms - self.lateness_ms

    def apply(self, events: Iterable[ResolvedEvent], watermark_ms: int | None = None
              ) -> JourneyOutput:
        """Apply a batch in arrival order; the watermark is max(given, event times seen).

        The in-order event (the common case) is a handful of dict and attribute operations,
        inlined here; an out-of-order one goes through :meth:`_insert`.
        """
        out = JourneyOutput()
        if watermark_ms is not None and watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        wm = self.watermark_ms
        lateness = self.lateness_ms
        frontier = wm - lateness
        customers = self.customers
        steps = out.steps
        add_step = steps.append
        changed = out.changed
        add_changed = changed.add
        horizon = self.horizon_ms
        gap_ms = self.session_gap_ms
        kept = self.kept
        dedup_bytes = self.dedup_bytes
        outcome = self._outcome
        due = self._due
        new_hasher = _BLAKE2B_8.copy
        for ev in events:
            cid = ev.customer_id
            te = ev.event
            eid = te.event_id
            hasher = new_hasher()
            hasher.update(eid.encode())
            digest = hasher.digest()
            s = customers.get(cid)
            if s is not None:
                ring = s.seen
                i = ring.find(digest)
                if i >= 0 and (i % DIGEST_BYTES == 0 or self._seen(s, digest)):
                    out.duplicates.append(ev)
                    continue
            ts = ev.ts_ms
            if ts < frontier:
                out.late.append(LateEvent(ev, wm, frontier))
                continue
            if s is None:
                s = customers[cid] = CustomerState()
            if ts > wm:
                wm = ts
                frontier = ts - lateness
            ring = s.seen
            if len(ring) < dedup_bytes:
                ring += digest
            else:
                pos = s.seen_pos
                ring[pos:pos + DIGEST_BYTES] = digest
                s.seen_pos = (pos + DIGEST_BYTES) % dedup_bytes
            tp = te.touchpoint
            channel = te.channel
            given = te.session_id
            segment = ev.segment
            revenue = te.revenue or 0
            e = (ts, eid, tp, channel, given, segment, revenue)
            hist = s.history
            old = s.cur
            last_ts, is_open, src, prev2, sess, sess_start, jno, _, _ = old
            if hist and (ts < last_ts or (ts == last_ts and digest
                                           <= event_digest(hist[-1][_ID]))):
                self.watermark_ms = wm
                self._insert(cid, s, e, out)
                if ts < s.first_ts_ms:
                    s.first_ts_ms = ts
                if s.cur is not old:
                    self._index(cid, old, s.cur)
            else:
                # The walk of `_walk`, inlined, with the counters of `_count`.
                was_open = is_open
                if is_open and ts - last_ts >= horizon:
                    expiry = self._expiry_step(cid, old)
                    add_step(expiry)
                    s.n_expired += 1
                    is_open = False
                if not is_open:
                    jno += 1
                    src = START
                    prev2 = ""
                if given is not None:
                    is_new = given != sess or last_ts < 0
                    session = given
                elif last_ts >= 0 and ts - last_ts <= gap_ms:
                    is_new = False
                    session = sess
                else:
                    is_new = True
                    session = f"{cid}/{ts}"
                if is_new:
                    sess_start = ts
                    s.n_sessions += 1
                dst = outcome.get(tp, tp)
                add_step(_new(Step, (cid, segment, channel, tp, src, dst, prev2,
                                     0 if src == START else ts - last_ts, ts, session, is_new,
                                     revenue, jno, 1, eid)))
                now_open = dst != CONVERSION and dst != NULL
                s.cur = _new(Cursor, (ts, now_open, dst, src, session, sess_start, jno, channel,
                                      segment))
                hist.append(e)
                s.n_events += 1
                by_channel = s.by_channel
                by_channel[channel] = by_channel.get(channel, 0) + 1
                if channel == "support":
                    s.n_support += 1
                if revenue:
                    s.revenue += revenue
                if not now_open:
                    if dst == CONVERSION:
                        s.n_conversions += 1
                    else:
                        s.n_churns += 1
                if s.first_ts_ms < 0:
                    s.first_ts_ms = ts
                # The deadline index (see `_index`), inlined.
                ob = (last_ts + horizon) // DUE_BUCKET_MS if was_open else None
                nb = (ts + horizon) // DUE_BUCKET_MS if now_open else None
                if ob != nb:
                    if ob is not None:
                        waiting = due.get(ob)
                        if waiting is not None:
                            waiting.discard(cid)
                            if not waiting:
                                del due[ob]
                    if nb is not None:
                        waiting = due.get(nb)
                        if waiting is None:
                            due[nb] = {cid}
                        else:
                            waiting.add(cid)
            if len(hist) > kept and hist[0][_TS] < frontier:
                self._fold(cid, s, frontier)
            add_changed(cid)
        self.watermark_ms = wm
        return out

    def expire(self, now_ms: int) -> JourneyOutput:
        """Advance the watermark to `now_ms`; end journeys idle past the null horizon.

        A journey whose last event is at `t` ends with ``last -> null`` at event time
        ``t + null_horizon_s`` once that time is behind the frontier (so no event that can still
        be applied comes before it), and folds the history of those customers. Only the
        journeys falling due are visited (an index by the hour of their deadline).
        """
        out = JourneyOutput()
        if now_ms > self.watermark_ms:
            self.watermark_ms = now_ms
        frontier = self.frontier_ms
        last_bucket = frontier // DUE_BUCKET_MS
        for bucket in sorted(b for b in self._due if b <= last_bucket):
            # in id order: the expiry steps' order is the same in every process, whatever
            # PYTHONHASHSEED (a set's order is not)
            for cid in sorted(self._due.pop(bucket)):
                s = self.customers.get(cid)
                if s is None:
                    continue
                cur = s.cur
                if not cur.is_open:
                    continue
                if cur.last_ts_ms + self.horizon_ms > frontier:
                    self._due.setdefault(bucket, set()).add(cid)  # due later this hour
                    continue
                self._emit(s, [self._expiry_step(cid, cur)], out)
                s.cur = cur._replace(is_open=False)
                if len(s.history) > self.kept and s.history[0][_TS] < frontier:
                    self._fold(cid, s, frontier)
                out.changed.add(cid)
        return out

    def detach(self, customer_id: str) -> CustomerState | None:
        """Remove and return a customer's state (it moves to another partition on a merge)."""
        s = self.customers.pop(customer_id, None)
        if s is not None:
            self._index(customer_id, s.cur, _EMPTY)
        return s

    def attach(self, customer_id: str, state: CustomerState) -> None:
        """Adopt a customer's state detached elsewhere (follow with :meth:`merge`)."""
        self.customers[customer_id] = state
        self._index(customer_id, _EMPTY, state.cur)

    def __contains__(self, customer_id: str) -> bool:
        """Whether `customer_id` has state here (the native processor answers without a copy;
        use this, not `customers`, outside the processor)."""
        return customer_id in self.customers

    def state_of(self, customer_id: str) -> CustomerState | None:
        """One customer's state, or None (from the native processor: a copy)."""
        return self.customers.get(customer_id)

    def reindex(self) -> None:
        """Rebuild the deadline index from `customers` (after restoring them from a store)."""
        self._due = {}
        for cid, s in self.customers.items():
            self._index(cid, _EMPTY, s.cur)

    def merge(self, loser: str, winner: str) -> JourneyOutput:
        """Combine `loser`'s journey into `winner`'s in event-time order; return corrections.

        Retracts the steps of both kept histories after the later of their two starts and adds
        the steps of the recombined sequence under `winner`. Counters are summed.
        """
        out = JourneyOutput()
        if loser == winner or loser not in self.customers:
            return out
        ls = self.customers.pop(loser)
        ws = self.customers.get(winner)
        if ws is None:
            ws = self.customers[winner] = CustomerState()
        out.changed.update((loser, winner))
        # Both bases are states after events we no longer keep; recombine after the later one.
        cut = max(ws.base.last_ts_ms, ls.base.last_ts_ms)
        start = ws.base if ws.base.last_ts_ms >= ls.base.last_ts_ms else ls.base
        retracted: list[Step] = []
        for cid, s in ((winner, ws), (loser, ls)):
            i = 0
            cur = s.base
            while i < len(s.history) and s.history[i][_TS] <= cut:
                cur = self._walk(cid, cur, s.history[i], None)
                i += 1
            old: list[Step] = []
            end = self._replay(cid, cur, s.history[i:], old)
            if s.cur.is_open != end.is_open:  # an expiry emitted by `expire` after the history
                old.append(self._expiry_step(cid, end))
            retracted.extend(old)
        kept = sorted(
            {e[_ID]: e for e in ws.history + ls.history if e[_TS] > cut}.values(),
            key=_order,
        )
        added: list[Step] = []
        new_cur = self._replay(winner, start, kept, added)
        # Sum the counters, then correct them by the steps that changed.
        ws.n_events += ls.n_events
        ws.n_sessions += ls.n_sessions
        ws.n_support += ls.n_support
        ws.n_conversions += ls.n_conversions
        ws.n_churns += ls.n_churns
        ws.n_expired += ls.n_expired
        ws.revenue += ls.revenue
        for ch, n in ls.by_channel.items():
            ws.by_channel[ch] = ws.by_channel.get(ch, 0) + n
        firsts = [t for t in (ws.first_ts_ms, ls.first_ts_ms) if t >= 0]
        ws.first_ts_ms = min(firsts) if firsts else -1
        if new_cur.is_open and new_cur.last_ts_ms + self.horizon_ms <= self.frontier_ms:
            added.append(self._expiry_step(winner, new_cur))
            new_cur = new_cur._replace(is_open=False)
        # The winner's steps before the loser's first kept event come out the same: they cancel.
        self._emit(ws, _net(retracted, added), out)
        ws.base = start
        self._index(loser, ls.cur, _EMPTY)
        self._index(winner, ws.cur, new_cur)
        ws.cur = new_cur
        ws.history = kept
        seen = ws.seen + ls.seen
        ws.seen = seen[-self.dedup_bytes:] if len(seen) > self.dedup_bytes else seen
        ws.seen_pos = 0
        return out

    def snapshot(self, customer_id: str) -> CustomerSnapshot | None:
        """The serving view of one customer, or None if the customer is unknown."""
        s = self.customers.get(customer_id)
        if s is None:
            return None
        hist = s.history[-self.kept:]
        cur = s.cur
        return CustomerSnapshot(
            customer_id=customer_id,
            last_touchpoints=[(e[_TS], e[_TP], e[_CH]) for e in hist],
            markov_state=cur.src if cur.is_open or cur.src in (START, CONVERSION) else NULL,
            journey_open=cur.is_open,
            journey_no=cur.journey_no,
            session_id=cur.session_id,
            session_start_ms=cur.session_start_ms,
            first_seen_ms=s.first_ts_ms,
            last_seen_ms=cur.last_ts_ms,
            since_previous_ms=hist[-1][_TS] - hist[-2][_TS] if len(hist) >= 2 else -1,
            n_events=s.n_events,
            n_sessions=s.n_sessions,
            n_support=s.n_support,
            n_conversions=s.n_conversions,
            n_churns=s.n_churns,
            n_expired=s.n_expired,
            revenue=s.revenue,
            by_channel=dict(s.by_channel),
        )

    # -- internals ------------------------------------------------------------------------

    def _index(self, cid: str, old: Cursor, new: Cursor) -> None:
        """Move a customer between deadline buckets when its last event or openness changed."""
        ob = (old.last_ts_ms + self.horizon_ms) // DUE_BUCKET_MS if old.is_open else None
        nb = (new.last_ts_ms + self.horizon_ms) // DUE_BUCKET_MS if new.is_open else None
        if ob == nb:
            return
        if ob is not None:
            waiting = self._due.get(ob)
            if waiting is not None:
                waiting.discard(cid)
                if not waiting:
                    del self._due[ob]
        if nb is not None:
            waiting = self._due.get(nb)
            if waiting is None:
                self._due[nb] = {cid}
            else:
                waiting.add(cid)

    def _seen(self, s: CustomerState, digest: bytes) -> bool:
        ring = s.seen
        i = ring.find(digest)
        while i >= 0:
            if i % DIGEST_BYTES == 0:
                return True
            i = ring.find(digest, i + 1)
        return False

    def _insert(self, cid: str, s: CustomerState, e: HistoryEntry, out: JourneyOutput) -> None:
        """Insert an out-of-order entry and emit the corrections of the steps after it."""
        hist = s.history
        key = _order(e)
        i = len(hist)
        while i > 0 and _order(hist[i - 1]) > key:  # late events land near the end
            i -= 1
        cur = self._replay(cid, s.base, hist[:i], None)
        old: list[Step] = []
        self._replay(cid, cur, hist[i:], old)
        new: list[Step] = []
        end = self._replay(cid, cur, [e, *hist[i:]], new)
        self._emit(s, _net(old, new), out)
        hist.insert(i, e)
        s.cur = end

    def _fold(self, cid: str, s: CustomerState, frontier: int) -> None:
        """Drop history older than the frontier beyond the last `kept` entries into `base`."""
        hist = s.history
        n = 0
        base = s.base
        while len(hist) - n > self.kept and hist[n][_TS] < frontier:
            base = self._walk(cid, base, hist[n], None)
            n += 1
        if n:
            s.base = base
            del hist[:n]
