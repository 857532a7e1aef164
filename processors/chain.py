"""The processor chain: validate, resolve, journeys, transitions, funnels; one batch at a time.

Both the in-process replay and the streaming workers call this, so given the same events in the
same order they produce the same outputs. No I/O: the caller reads messages and writes outputs.

Order of work for one batch of raw messages:

1. decode each message (bad ones become dead letters, with their source);
2. resolve identities for the accepted events (merges of known customers come back too);
3. fold merged customers' journeys together (:meth:`JourneyProcessor.merge`) and their open
   funnel runs (:meth:`FunnelTracker.merge_customer`) *before* the batch's events, which already
   carry the winners' ids;
4. stamp every event with its customer's current segment (``segment_of``, from the models);
5. apply the events to journeys (sessions, Markov steps, dedup, lateness, in-order corrections)
   and count the steps in the hopping windows;
6. release events that are now behind the frontier (watermark minus allowed lateness) to the
   funnels in event-time order. Funnels cannot retract a stage, so they only see events whose
   order can no longer change: this makes funnel results independent of arrival order within
   the allowed lateness, at the price of funnel outputs trailing by that lateness.

Each batch runs with the cyclic garbage collector paused (:func:`gc_paused`): it collects once
after the batch instead of walking the live state of every customer many times during it.

Event time drives everything: the watermark is the largest event time seen. :meth:`finish` ends
a bounded input (a file): it releases and finalizes what is still open without inventing the
passage of time (journeys and funnel runs that are open at the end of the data stay open).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import operator
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from processors.attribution import Attribution, attribute
from processors.attribution_native import (
    NativePathAccumulator,
    adopt_paths,
    new_path_accumulator,
)
from processors.collector import gc_paused
from processors.config import ProcessingConfig
from processors.events import ResolvedEvent, TouchpointEvent
from processors.funnels import FunnelTransition
from processors.funnels_native import NativeFunnelTracker, adopt_funnels, new_funnel_tracker
from processors.identity import (
    Conflict,
    IdentityLink,
    IdentityStore,
    MergeRecord,
)
from processors.identity_native import new_resolver
from processors.journeys import (
    CustomerState,
    JourneyOutput,
    LateEvent,
    Step,
    event_digest,
)
from processors.journeys_native import adopt_engine, new_journey_stage
from processors.pending_native import adopt_pending, new_pending
from processors.transitions import CellRow
from processors.validation import (
    Accepted,
    DeadLetter,
    DecodeEngine,
    Source,
    decode_engine,
    decode_events,
)

SegmentOf = Callable[[str], str]


def _batch(method: Callable) -> Callable:  # type: ignore[type-arg]
    """Run a chain method under :func:`gc_paused`."""

    @functools.wraps(method)
    def run(*args: object, **kwargs: object) -> object:
        with gc_paused():
            return method(*args, **kwargs)

    return run


def _entry_ts(entry: tuple[int, int, ResolvedEvent]) -> int:
    return entry[0]


def _digest_order_ties(
    entries: list[tuple[int, int, ResolvedEvent]], times: list[int]
) -> None:
    """Put each run of equal times in `entries` (sorted by ``(ts_ms, seq)``; `times` are their
    times) in event-id digest order, then seq, in place: the release order does not depend on
    arrival order. Ties are rare, so only the runs that have them are touched."""
    n = len(times)
    i = 0
    for j in [k for k, a, b in zip(itertools.count(), times, times[1:]) if a == b]:
        if j < i:
            continue  # inside the run just sorted
        end = j + 1
        while end < n and times[end] == times[j]:
            end += 1
        entries[j:end] = sorted(entries[j:end],
                                key=lambda e: (event_digest(e[2].event.event_id), e[1]))
        i = end


@dataclass
class ChainOutput:
    """Everything one batch produced, for the sinks and the models."""

    dead: list[DeadLetter] = field(default_factory=list)
    resolved: list[ResolvedEvent] = field(default_factory=list)
    applied: list[ResolvedEvent] = field(default_factory=list)
    duplicates: list[ResolvedEvent] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    merges: list[MergeRecord] = field(default_factory=list)
    links: list[IdentityLink] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    cells: list[CellRow] = field(default_factory=list)
    funnel_transitions: list[FunnelTransition] = field(default_factory=list)
    released: list[ResolvedEvent] = field(default_factory=list)  # final, in event-time order
    n_ignored_identifiers: int = 0
    # The steps as the journeys stage returned them, call by call: lists of `Step`s, or the
    # native core's batches of Rust records, made into `Step`s only if `steps` is read (the
    # sinks and models do not read them).
    step_parts: list[Sequence[Step]] = field(default_factory=list, repr=False)

    @property
    def steps(self) -> list[Step]:
        """Every step of the batch, in emission order (one list, made when first read)."""
        parts = self.step_parts
        if len(parts) != 1 or type(parts[0]) is not list:
            parts[:] = [[st for part in parts for st in part]]
        return parts[0]  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.steps == other.steps and all(  # type: ignore[attr-defined]
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self) if f.name != "step_parts")

    def counters(self) -> dict[str, int]:
        return {
            "dead_lettered": len(self.dead),
            "accepted": len(self.resolved),
            "applied": len(self.applied),
            "duplicates": len(self.duplicates),
            "late": len(self.late),
            "merges": len(self.merges),
            "conflicts": len(self.conflicts),
            "ignored_identifiers": self.n_ignored_identifiers,
        }


def late_dead_letter(late: LateEvent, source: Source) -> DeadLetter:
    """A late event as a dead letter (stage ``late``): counted and kept, never silently dropped."""
    raw = late.event.event.model_dump_json().encode()
    reason = (
        f"late: event time {late.event.ts_ms} is before the frontier {late.frontier_ms} "
        f"(watermark {late.watermark_ms} minus the allowed lateness)"
    )
    return DeadLetter(raw, reason, source, stage="late")


class JourneyChain:
    """The per-batch processor chain. One instance per input (a file, or a Kafka partition)."""

    hold: tuple[int, int] | None = None  # class default: checkpoints pickled before it existed
    decode_engine: DecodeEngine = "auto"  # (likewise)

    def __init__(
        self,
        config: ProcessingConfig,
        identity_store: IdentityStore | None = None,
        segment_of: SegmentOf | None = None,
    ) -> None:
        self.config = config
        # native (Rust) fast path when installed, the rest in Python: decode.engine (checked here:
        # `native` without the module is a ConfigError)
        decode_engine(config.decode.engine)
        self.decode_engine = config.decode.engine
        # native (Rust) for the in-memory graph when installed, else Python: identity.engine
        self.resolver = new_resolver(config.identity, config.identity_salt, identity_store)
        # Corrections carry only the changed cells (the sink's views read the latest row of each
        # cell, migration 0011): a whole-pane re-emission costs every cell of a busy hour.
        # Both native (Rust) when installed, else Python: journey.engine
        self.journeys, self.transitions = new_journey_stage(config, corrections="cells")
        # Their per-event loops native (Rust) over the same state when installed, else Python:
        # journey.engine
        self.funnels = new_funnel_tracker(config)
        self.paths = new_path_accumulator(config)
        self.segment_of = segment_of
        # The funnel reorder heap: (ts_ms, arrival seq, event); ties in time are put in
        # event-id digest order when released (`_release`), so arrival order does not matter.
        # A list, or where the funnels and paths are native the same entries as compact native
        # records (processors/pending_native.py; `_waiting` and `_set_waiting` read and set it).
        self._pending: list[tuple[int, int, ResolvedEvent]] | Any = new_pending(self.funnels,
                                                                                self.paths)
        self._seq = 0
        self._renamed: dict[str, str] = {}  # merged-away customer -> its winner
        # (frontier_ms, watermark_ms) the chain must not release or finalize past, while a
        # streaming merge's transfer is on its way here (see :meth:`hold_at_current`).
        self.hold: tuple[int, int] | None = None

    def __setstate__(self, state: dict[str, object]) -> None:
        # Checkpoints pickled before the heap dropped its digests: (ts, digest, seq, event).
        pending = state.get("_pending")
        if pending and len(pending[0]) == 4:  # type: ignore[index, arg-type]
            state["_pending"] = [(e[0], e[2], e[3]) for e in pending]  # type: ignore[attr-defined]
            heapq.heapify(state["_pending"])  # type: ignore[arg-type]
        self.__dict__.update(state)
        # A checkpoint of the Python journeys stage goes on natively where journey.engine asks
        # for it and the module is installed (the same state, so the same outputs).
        self.journeys, self.transitions = adopt_engine(self.config, self.journeys,
                                                       self.transitions)
        self.funnels = adopt_funnels(self.config, self.funnels)
        self.paths = adopt_paths(self.config, self.paths)
        self._pending = adopt_pending(self._pending, self.funnels, self.paths)

    # -- one batch ----------------------------------------------------------------------------

    @_batch
    def process(self, messages: Sequence[tuple[bytes, Source]]) -> ChainOutput:
        """Run one batch of raw messages through the chain: ``(raw, source)`` pairs, or the
        messages of one file or partition as :class:`processors.validation.Lines` (a source is
        made only for a message the chain dead-letters)."""
        events, at, dead = decode_events(messages, self.decode_engine)
        return self._resolve(events, lambda i: messages[at[i]][1], ChainOutput(dead=dead))

    def process_accepted(self, accepted: Sequence[Accepted], out: ChainOutput) -> ChainOutput:
        """The chain after validation: resolve identities, then :meth:`process_resolved`."""
        return self._resolve([a.event for a in accepted], lambda i: accepted[i].source, out)

    @_batch
    def _resolve(
        self, events: list[TouchpointEvent], source_of: Callable[[int], Source], out: ChainOutput
    ) -> ChainOutput:
        """:meth:`process_accepted` of `events`; `source_of(i)` is the source of ``events[i]``
        (asked only for the ones the resolver dead-letters)."""
        if not events:
            return out
        resolved = self.resolver.resolve_batch(events)
        out.links.extend(resolved.links)
        out.conflicts.extend(resolved.conflicts)
        out.n_ignored_identifiers += resolved.n_ignored_identifiers
        for (event, reason), i in zip(resolved.dead, resolved.dead_at, strict=True):
            raw = event.model_dump_json().encode()
            out.dead.append(DeadLetter(raw, reason, source_of(i), stage="resolve"))
        return self.process_resolved(resolved.resolved, resolved.merges, out)

    @_batch
    def process_resolved(
        self,
        events: list[ResolvedEvent],
        merges: Sequence[MergeRecord] = (),
        out: ChainOutput | None = None,
    ) -> ChainOutput:
        """Everything after identity resolution (the streaming journey agent starts here).

        `merges` are applied before `events`, which already carry the winners' ids.
        """
        out = out if out is not None else ChainOutput()
        for merge in merges:
            out.merges.append(merge)
            self._unrename(merge.winner)  # a winner may be an id merged away before
            self._renamed[merge.loser] = merge.winner
            self.paths.rename(merge.loser, merge.winner)
            self._absorb(self.journeys.merge(merge.loser, merge.winner), out)
            out.funnel_transitions.extend(self.funnels.merge_customer(merge.loser, merge.winner))

        if self.segment_of is not None:
            segment_of = self.segment_of
            for ev in events:
                ev.segment = segment_of(ev.customer_id)
        out.resolved.extend(events)
        n_dup, n_late = len(out.duplicates), len(out.late)
        pending, seq = self._pending, self._seq
        # the native core puts the applied events' records into the native buffer itself
        fed = not isinstance(pending, list) and getattr(self.journeys, "feeds_pending", False)
        if fed:
            journey_out = self.journeys.apply(events, pending=pending, seq=seq)  # type: ignore[call-arg]
        else:
            journey_out = self.journeys.apply(events)
        self._absorb(journey_out, out)
        if self.hold is None:  # no journey ends before a customer still on its way here
            self._absorb(self.journeys.expire(self.journeys.watermark_ms), out)

        # the events neither duplicate nor late, in order (the native core lists them)
        applied = getattr(journey_out, "applied", None)
        if applied is None:
            applied = events
            if len(out.duplicates) > n_dup or len(out.late) > n_late:
                skipped = {id(e) for e in out.duplicates[n_dup:]}
                skipped.update(id(late.event) for late in out.late[n_late:])
                applied = [e for e in events if id(e) not in skipped]
        out.applied.extend(applied)
        # Appended in arrival order; `_release` sorts the list (any heap order is kept valid).
        if isinstance(pending, list):
            pending.extend([(ev.ts_ms, seq + i, ev) for i, ev in enumerate(applied, 1)])
        elif not fed:
            pending.extend(applied, seq)  # (compact records: _release reads them)
        self._seq = seq + len(applied)
        frontier_ms, watermark_ms = self.hold or (
            self.journeys.frontier_ms, self.journeys.watermark_ms
        )
        self._release(frontier_ms, out)
        out.cells.extend(self.transitions.advance(watermark_ms))
        return out

    # -- customers moving between partitions (streaming merges) -------------------------------

    def detach_customer(self, loser: str, winner: str) -> dict[str, object]:
        """Take a merged-away customer out of this chain, to hand to the winner's partition.

        Everything kept per customer leaves: the journey state, events waiting for the frontier
        and the open attribution path. Events for `loser` that still arrive here are for
        `winner` from now on (see :meth:`winner_of`).
        """
        # Waiting events of customers merged into `loser` here before are `loser`'s: they go
        # too (left here, they would reach these funnels, where `winner` has no run). Only the
        # ids of waiting events are looked up: every id ever merged away here would make each
        # merge cost as much as all the merges before it (quadratic over a long stream).
        # (The buffer is asked natively, without making its entries: each merge used to
        # copy every waiting event, a second's worth at 1 s allowed lateness, an hour's at 1 h.)
        ours = {loser}
        ours.update(cid for cid in self._waiting_customers(self._renamed)
                    if self._winner(cid) == loser)
        self._unrename(winner)
        self._renamed[loser] = winner
        mine = self._take_waiting(ours)
        return {
            "loser": loser,
            "journey": self.journeys.detach(loser),
            "pending": [ev if ev.customer_id == loser else
                        ResolvedEvent(loser, ev.event, ev.segment) for *_, ev in mine],
            "path": self.paths.open.pop(loser, None),
            "funnels": self.funnels.detach(loser),
        }

    @_batch
    def attach_customer(
        self, package: dict[str, object], merge: MergeRecord, out: ChainOutput | None = None
    ) -> ChainOutput:
        """Adopt a customer detached by another partition's chain and merge it into the winner."""
        loser = merge.loser
        journey = package["journey"]
        if journey is not None and loser not in self.journeys:
            self.journeys.attach(loser, journey)  # type: ignore[arg-type]
        if package["path"] is not None:
            self.paths.open.setdefault(loser, package["path"])  # type: ignore[arg-type]
        self.funnels.attach(loser, package.get("funnels") or {})  # type: ignore[arg-type]
        for ev in self._unseen_pending(package, merge.winner):
            self._seq += 1
            if isinstance(self._pending, list):
                heapq.heappush(self._pending, (ev.ts_ms, self._seq, ev))
            else:
                self._pending.push(ev.ts_ms, self._seq, ev)
        return self.process_resolved([], [merge], out)

    def _unseen_pending(self, package: dict[str, object], winner: str) -> list[ResolvedEvent]:
        """The adopted customer's waiting events that the winner has not seen as well.

        After a crash a raw batch is resolved again with the ids current then, so a copy of an
        event the loser already holds can reach the winner's partition (as the winner's) before
        the transfer brings the first. The funnels must see it once: a copy waiting on either
        side is dropped, the loser's when the winner saw the event (pending or already
        released), the winner's when the loser had seen it but no longer holds it (released).
        """
        pending: list[ResolvedEvent] = package["pending"]  # type: ignore[assignment]
        journeys = self.journeys
        mine = journeys.state_of(winner)
        waiting = self._waiting_event_ids(winner)
        kept = [ev for ev in pending if ev.event.event_id not in waiting
                and (mine is None or not journeys._seen(mine, event_digest(ev.event.event_id)))]
        theirs: CustomerState | None = package["journey"]  # type: ignore[assignment]
        if theirs is not None and waiting:
            brought = {ev.event.event_id for ev in pending}
            gone = {i for i in waiting if i not in brought
                    and journeys._seen(theirs, event_digest(i))}
            if gone:
                self._set_waiting([e for e in self._waiting() if not (
                    e[-1].customer_id == winner and e[-1].event.event_id in gone)])
        return kept

    def forget_customer(self, customer_id: str) -> None:
        """Drop everything kept for one customer (a deletion request, `journeymap forget`):
        journey, events waiting for the frontier, open attribution path and funnel runs. Counts
        already aggregated (transitions, funnel cells) hold no identifier and stay."""
        self.journeys.detach(customer_id)
        self.paths.open.pop(customer_id, None)
        waiting = self._waiting()
        if any(entry[-1].customer_id == customer_id for entry in waiting):
            self._set_waiting([e for e in waiting if e[-1].customer_id != customer_id])
        for runs in self.funnels.state.runs.values():
            runs.pop(customer_id, None)

    def hold_at_current(self) -> None:
        """Release and finalize nothing past the current frontier until ``hold`` is cleared.

        The streaming worker calls this when a merge announces a transfer: the merged-away
        customer's pending events and journey must reach this chain before its frontier passes
        them, or funnels and final panes would see them out of order.
        """
        if self.hold is None:
            self.hold = (self.journeys.frontier_ms, self.journeys.watermark_ms)

    def revive(self, customer_id: str) -> None:
        """`customer_id`, merged away before, is a merge winner again (an earlier identifier
        made it canonical): its events stay here instead of following the old merge."""
        self._unrename(customer_id)

    def _unrename(self, customer_id: str) -> None:
        """`customer_id` names a customer again. What was merged away under that id before
        stays with the customer it was merged into: waiting events still filed under the id, and
        customers renamed to it. (Else a merge cycle, L into W, then W into L by earlier evidence,
        then L into W again, handed W's old events to the revived W's own waiting list, where a
        later transfer dropped them as copies it had seen: a whole customer lost.)"""
        if customer_id not in self._renamed:
            return
        owner = self._winner(customer_id)
        if self._waiting_customers({customer_id}):
            # (ts, seq) keys are unchanged, so the heap order holds
            self._set_waiting([
                (ts, seq, ResolvedEvent(owner, ev.event, ev.segment))
                if ev.customer_id == customer_id else (ts, seq, ev)
                for ts, seq, ev in self._waiting()
            ], heapify=False)
        renamed = self._renamed
        for cid, to in list(renamed.items()):
            if to == customer_id:
                renamed[cid] = owner
        del renamed[customer_id]

    def winner_of(self, customer_id: str) -> str | None:
        """The customer `customer_id` was merged into, if it was merged away here."""
        return self._winner(customer_id) if customer_id in self._renamed else None

    # -- the end of a bounded input ----------------------------------------------------------

    @_batch
    def finish(self) -> ChainOutput:
        """Release and finalize everything still buffered (the end of a file)."""
        out = ChainOutput()
        watermark = self.journeys.watermark_ms
        self._release(None, out)
        out.funnel_transitions.extend(self.funnels.advance(watermark))
        # Every pane up to the last event becomes final: push the frontier past it.
        lateness_ms = self.config.journey.allowed_lateness_ms
        step_ms = self.config.windows.step_s * 1000
        out.cells.extend(self.transitions.advance(watermark + lateness_ms + step_ms))
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _absorb(self, journey_out: JourneyOutput, out: ChainOutput) -> None:
        # The native core's steps stay Rust records (its `batch`): the native counter counts
        # them from there, and `Step`s are made only if `out.steps` is read.
        steps: Sequence[Step] | None = getattr(journey_out, "batch", None)
        if steps is None:
            steps = journey_out.steps
        if steps:
            out.step_parts.append(steps)
        out.late.extend(journey_out.late)
        out.duplicates.extend(journey_out.duplicates)
        self.transitions.update(steps)

    def _winner(self, customer_id: str) -> str:
        seen = []
        while customer_id in self._renamed:
            seen.append(customer_id)
            customer_id = self._renamed[customer_id]
        for c in seen[:-1]:  # path compression
            self._renamed[c] = customer_id
        return customer_id

    def _waiting(self) -> list[tuple[int, int, ResolvedEvent]]:
        """The entries of `_pending` (the list itself, or a native buffer's as a new list)."""
        pending = self._pending
        return pending if isinstance(pending, list) else pending.entries()  # type: ignore[no-any-return]

    def _waiting_customers(self, among: Container[str]) -> set[str]:
        """The customer ids of waiting events that are in `among`."""
        pending = self._pending
        if isinstance(pending, list):
            return {cid for cid in {e[-1].customer_id for e in pending} if cid in among}
        return pending.customers_in(among)  # type: ignore[no-any-return]

    def _waiting_event_ids(self, customer_id: str) -> set[str]:
        """The event ids of `customer_id`'s waiting events."""
        pending = self._pending
        if isinstance(pending, list):
            return {e[-1].event.event_id for e in pending if e[-1].customer_id == customer_id}
        return pending.event_ids_of(customer_id)  # type: ignore[no-any-return]

    def _take_waiting(self, ids: set[str]) -> list[tuple[int, int, ResolvedEvent]]:
        """Take the waiting entries of the customers `ids` out (in the buffer's order); what
        stays is made a heap again."""
        pending = self._pending
        if not isinstance(pending, list):
            return pending.take(ids)  # type: ignore[no-any-return]
        mine = [entry for entry in pending if entry[-1].customer_id in ids]
        if mine:
            self._set_waiting([e for e in pending if e[-1].customer_id not in ids])
        return mine

    def _set_waiting(self, entries: list[tuple[int, int, ResolvedEvent]],
                     heapify: bool = True) -> None:
        """`_pending` holds `entries` (made a heap first unless told they are one)."""
        if heapify:
            heapq.heapify(entries)
        if isinstance(self._pending, list):
            self._pending = entries
        else:
            self._pending.replace(entries)

    def _release(self, frontier_ms: int | None, out: ChainOutput) -> None:
        """Feed the funnels every buffered event before `frontier_ms` (all when None).

        Events go out in ``(ts_ms, arrival seq)`` order, ties in time in event-id digest order.
        `_pending` is sorted here, once per batch (mostly sorted already, so close to linear),
        and what stays is sorted, which is also a valid heap for the other methods.
        """
        pending = self._pending
        if not isinstance(pending, list):
            self._release_native(pending, frontier_ms, out)
            return
        pending.sort()
        if frontier_ms is None:
            k = len(pending)
        else:
            k = bisect.bisect_left(pending, frontier_ms, key=_entry_ts)
        if not k:
            return
        taken = pending[:k]
        del pending[:k]
        times = [entry[0] for entry in taken]
        if any(map(operator.eq, times, itertools.islice(times, 1, None))):
            _digest_order_ties(taken, times)
        renamed = self._renamed
        if renamed:
            winner = self._winner
            ready = [ev if ev.customer_id not in renamed else
                     ResolvedEvent(winner(ev.customer_id), ev.event, ev.segment)
                     for _, _, ev in taken]
        else:
            ready = [entry[2] for entry in taken]
        if ready:
            out.released.extend(ready)
            self.paths.add(ready)
            result = self.funnels.update(ready)
            out.funnel_transitions.extend(result.transitions)
            if frontier_ms is not None:
                out.funnel_transitions.extend(self.funnels.advance(frontier_ms))

    def _release_native(self, pending: Any, frontier_ms: int | None, out: ChainOutput) -> None:
        """:meth:`_release` from a native buffer: sorted, cut, ordered and renamed there, the
        funnels and paths fed its compact records, the events only handed to ``out``."""
        taken = pending.release(frontier_ms, self._renamed, self._winner)
        if taken is None:
            return
        ready, records = taken
        out.released.extend(ready)
        paths, funnels = self.paths, self.funnels
        # (a Python tracker or accumulator set on the chain after it was made reads the events)
        paths.add(records if isinstance(paths, NativePathAccumulator) else ready)
        result = funnels.update(records if isinstance(funnels, NativeFunnelTracker) else ready)
        out.funnel_transitions.extend(result.transitions)
        if frontier_ms is not None:
            out.funnel_transitions.extend(funnels.advance(frontier_ms))

    def current_watermark_ms(self) -> int:
        return self.journeys.watermark_ms

    def attribution(self, orders: Sequence[int] = (1, 2)) -> dict[str, list[Attribution]]:
        """Markov (each order) and heuristic attribution per level, as of the watermark."""
        now = self.journeys.watermark_ms
        return {
            level: attribute(self.paths.paths(level, now), orders)  # type: ignore[arg-type]
            for level in ("touchpoint", "channel")
        }
