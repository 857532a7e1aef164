""":class:`~processors.journeys.JourneyProcessor` with its per-customer state and its walk in Rust,
and the engine choice for the journeys stage (issue 4).

:class:`NativeJourneyProcessor` has ``JourneyProcessor``'s contract (``apply``, ``expire``,
``merge``, ``detach``/``attach``, ``snapshot``, ``in``, ``state_of``; the same
:class:`~processors.journeys.Step` records, duplicates and late events, in the same order). The
dedup rings, cursors, kept histories and counters of every customer live in the Rust core
(``native/journeys/src/lib.rs``, the package ``journeymap_journeys``, built by maturin:
``scripts/build-native.sh``); touchpoints, channels and segments are interned there. What stays
Python: the events read at the boundary, the output records (the steps only when read: the core
returns them as a ``StepBatch`` of Rust records, which the native transition counter counts as
they are, :class:`NativeJourneyOutput`). The index of open journeys by deadline hour is the
core's too (``_due`` is a copy of it as the Python processor's dict of sets); ``expire`` walks
each hour's customers in id order, as the Python processor does.

``customers`` is a *copy* of the whole state as :class:`~processors.journeys.CustomerState`
objects (for fingerprints and sizes); changing it does not change the core, and it costs every
customer: outside the processor use ``cid in journeys`` and ``journeys.state_of(cid)``, and
``detach``/``attach`` to move a customer.

:func:`new_journey_stage` picks the engine of the journeys processor and of the transition
counter together (``journey.engine``: ``auto``, ``python``, ``native``). A native processor
pickles as plain data (its customers' states) and unpickles as a native one, or as the Python
processor over the same states where the module is not installed; the counter likewise.
:func:`adopt_engine` moves a stage restored from a Python checkpoint to the native engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any, Literal

from processors.config import ProcessingConfig
from processors.errors import ConfigError
from processors.events import ResolvedEvent
from processors.journeys import (
    DIGEST_BYTES,
    CustomerSnapshot,
    CustomerState,
    JourneyOutput,
    JourneyProcessor,
    LateEvent,
    Step,
)
from processors.native import import_core, not_built
from processors.transitions import TransitionCounter
from processors.transitions_native import NativeTransitionCounter
from processors.transitions_native import _restore as _restore_counter

# (optional: the Python processor does the same)
_module, NATIVE_IMPORT_ERROR = import_core("journeymap_journeys")
NativeJourneyCore: Any = getattr(_module, "NativeJourneyCore", None)

NATIVE_AVAILABLE = NativeJourneyCore is not None

# JourneyOutput's own `steps` slot, under NativeJourneyOutput's property.
_STEPS_SLOT: Any = JourneyOutput.__dict__["steps"]


class NativeJourneyOutput(JourneyOutput):
    """A :class:`JourneyOutput` whose steps stay in the core's ``StepBatch`` (``batch``: the
    walk's Rust records) until ``steps`` is read: the chain hands the batch to the native
    counter and keeps it for :class:`~processors.chain.ChainOutput`, so no ``Step`` is made
    unless someone reads them. ``steps`` is then a list of the same ``Step`` records (made
    once; a module built before ``StepBatch`` returns that list itself)."""

    __slots__ = ("applied", "batch")

    def __init__(self, batch: Sequence[Step], late: list[LateEvent] | None = None,
                 duplicates: list[ResolvedEvent] | None = None,
                 changed: set[str] | None = None) -> None:
        self.batch = batch
        # `apply`'s events that were applied (neither duplicate nor late), in their order, or
        # None where not known (the chain then finds them)
        self.applied: Sequence[ResolvedEvent] | None = None
        self.late = [] if late is None else late
        self.duplicates = [] if duplicates is None else duplicates
        self.changed = set() if changed is None else changed

    @property  # type: ignore[override]
    def steps(self) -> list[Step]:
        try:
            steps: list[Step] = _STEPS_SLOT.__get__(self)
        except AttributeError:
            steps = list(self.batch)
            _STEPS_SLOT.__set__(self, steps)
        return steps

    @steps.setter
    def steps(self, steps: list[Step]) -> None:
        _STEPS_SLOT.__set__(self, steps)
        self.batch = steps

    def __eq__(self, other: object) -> bool:
        """Equal to a :class:`JourneyOutput` (either engine's) with the same fields."""
        if not isinstance(other, JourneyOutput):
            return NotImplemented
        return (self.steps, self.late, self.duplicates, self.changed) == (
            other.steps, other.late, other.duplicates, other.changed)


def _not_built() -> ConfigError:
    return not_built("journey", "journeys", "journeymap_journeys", NATIVE_IMPORT_ERROR,
                     "scripts/build-native.sh")


def _state(raw: tuple[object, ...]) -> CustomerState:
    s = CustomerState.__new__(CustomerState)
    s.__setstate__(raw)
    return s


class NativeJourneyProcessor:
    """:class:`JourneyProcessor` over a Rust core (see the module doc)."""

    #: whether :meth:`apply` can feed the chain's native reorder buffer (a module built before
    #: it could not)
    feeds_pending: bool = "pending" in (
        getattr(getattr(NativeJourneyCore, "apply", None), "__text_signature__", None) or "")

    def __init__(self, config: ProcessingConfig) -> None:
        if NativeJourneyCore is None:
            raise _not_built()
        self.config = config
        journey = config.journey
        self.kept = journey.last_touchpoints_kept
        self.lateness_ms = journey.allowed_lateness_ms
        self.horizon_ms = config.outcomes.null_horizon_s * 1000
        self.dedup_bytes = journey.dedup_ids_per_customer * DIGEST_BYTES
        self.core = NativeJourneyCore(
            Step,
            journey.session_gap_s * 1000,
            self.lateness_ms,
            self.kept,
            journey.dedup_ids_per_customer,
            self.horizon_ms,
            sorted(config.outcomes.conversion),
            sorted(config.outcomes.churn),
        )

    @property
    def watermark_ms(self) -> int:
        return self.core.watermark_ms  # type: ignore[no-any-return]

    @watermark_ms.setter
    def watermark_ms(self, value: int) -> None:
        self.core.watermark_ms = value

    @property
    def _due(self) -> dict[int, set[str]]:
        """A copy of the deadline index, as the Python processor's ``_due``."""
        return self.core.due()  # type: ignore[no-any-return]

    @property
    def frontier_ms(self) -> int:
        """Events before this event time are late: the watermark minus the allowed lateness."""
        return self.watermark_ms - self.lateness_ms

    @property
    def customers(self) -> dict[str, CustomerState]:
        """A copy of every customer's state (changing it does not change the core)."""
        return {cid: _state(raw) for cid, raw in self.core.export()}

    def apply(self, events: Iterable[ResolvedEvent], watermark_ms: int | None = None,
              pending: Any = None, seq: int = 0) -> JourneyOutput:
        """:meth:`JourneyProcessor.apply`. With `pending` (the chain's ``NativePending``) the
        applied events enter it too, with seqs ``seq + 1``, ``seq + 2``, ... in order, from
        what the core read of them (as ``pending.extend(out.applied, seq)``)."""
        if pending is not None:
            batch, duplicates, late, changed, *rest = self.core.apply(
                events, watermark_ms, pending, seq)
        else:
            batch, duplicates, late, changed, *rest = self.core.apply(events, watermark_ms)
        out = NativeJourneyOutput(batch, [LateEvent(*x) for x in late], duplicates, changed)
        if rest:  # (a module built before it returns four)
            applied = rest[0]
            out.applied = applied if applied is not None else (
                events if isinstance(events, list) else None)
        return out

    def expire(self, now_ms: int) -> JourneyOutput:
        """:meth:`JourneyProcessor.expire`."""
        batch, changed = self.core.expire(now_ms)
        return NativeJourneyOutput(batch, changed=changed)

    def merge(self, loser: str, winner: str) -> JourneyOutput:
        """:meth:`JourneyProcessor.merge`."""
        batch, changed = self.core.merge(loser, winner)
        return NativeJourneyOutput(batch, changed=changed)

    def detach(self, customer_id: str) -> CustomerState | None:
        """:meth:`JourneyProcessor.detach`."""
        raw = self.core.pop_state(customer_id)  # (out of the deadline index too)
        return None if raw is None else _state(raw)

    def attach(self, customer_id: str, state: CustomerState) -> None:
        """:meth:`JourneyProcessor.attach`."""
        self.core.put_state(customer_id, state.__getstate__())  # (and into the deadline index)

    def __contains__(self, customer_id: str) -> bool:
        """:meth:`JourneyProcessor.__contains__` (no copy)."""
        return customer_id in self.core  # type: ignore[no-any-return]

    def state_of(self, customer_id: str) -> CustomerState | None:
        """:meth:`JourneyProcessor.state_of`: a copy of one customer's state."""
        raw = self.core.get_state(customer_id)
        return None if raw is None else _state(raw)

    def reindex(self) -> None:
        """:meth:`JourneyProcessor.reindex`."""
        self.core.reindex()

    def snapshot(self, customer_id: str) -> CustomerSnapshot | None:
        """:meth:`JourneyProcessor.snapshot`."""
        raw = self.core.get_state(customer_id)
        if raw is None:
            return None
        view = SimpleNamespace(customers={customer_id: _state(raw)}, kept=self.kept)
        return JourneyProcessor.snapshot(view, customer_id)  # type: ignore[arg-type]

    # The Python processor's helper that touches only a CustomerState.
    def _seen(self, s: CustomerState, digest: bytes) -> bool:
        return JourneyProcessor._seen(self, s, digest)  # type: ignore[arg-type]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self.config, self.watermark_ms, self._due, self.core.export()))


def _restore(config: ProcessingConfig, watermark_ms: int, due: dict[int, set[str]],
             customers: list[tuple[str, tuple[object, ...]]]
             ) -> NativeJourneyProcessor | JourneyProcessor:
    """Unpickle a native processor: native again, or Python over the same states without the
    module (a checkpoint written where it was installed, read where it is not)."""
    if NativeJourneyCore is None:
        py = JourneyProcessor(config)
        py.watermark_ms = watermark_ms
        py.customers = {cid: _state(raw) for cid, raw in customers}
        py._due = due
        return py
    p = NativeJourneyProcessor(config)
    p.watermark_ms = watermark_ms
    for cid, raw in customers:  # (each into the deadline index: `due` is what they make)
        p.core.put_state(cid, raw)
    return p


def adopt_engine(
    config: ProcessingConfig, journeys: JourneyProcessor | NativeJourneyProcessor,
    transitions: TransitionCounter,
) -> tuple[JourneyProcessor | NativeJourneyProcessor, TransitionCounter]:
    """The stage restored from a checkpoint, moved to the native engine where `config` asks for
    it (`auto` or `native`) and the module is installed: a checkpoint written by the Python
    processor goes on natively, with the same state (the same customers and watermark, so the
    same deadline index), so the same outputs. Anything else is returned as it is."""
    engine = getattr(config.journey, "engine", "auto")  # configs pickled before the setting
    if engine == "python" or not NATIVE_AVAILABLE:
        return journeys, transitions
    if type(journeys) is JourneyProcessor:
        native = NativeJourneyProcessor(config)
        native.watermark_ms = journeys.watermark_ms
        for cid, s in journeys.customers.items():  # (each into the deadline index)
            native.core.put_state(cid, s.__getstate__())
        journeys = native
    if type(transitions) is TransitionCounter:
        transitions = _restore_counter(dict(transitions.__dict__))
    return journeys, transitions


def new_journey_stage(
    config: ProcessingConfig, corrections: Literal["pane", "cells", "delta"] = "pane"
) -> tuple[JourneyProcessor | NativeJourneyProcessor, TransitionCounter]:
    """The journeys processor and the transition counter for `config.journey.engine`: both
    native when the module is installed (`auto`) or asked for (`native`: a
    :class:`ConfigError` if it is not installed), else both Python. Same outputs either way."""
    engine = config.journey.engine
    if engine == "native" and not NATIVE_AVAILABLE:
        raise _not_built()
    lateness_s = config.journey.allowed_lateness_s
    if engine == "python" or not NATIVE_AVAILABLE:
        return (JourneyProcessor(config),
                TransitionCounter(config.windows, lateness_s, corrections))
    return (NativeJourneyProcessor(config),
            NativeTransitionCounter(config.windows, lateness_s, corrections))


def engine_of(journeys: object) -> str:
    """'native' or 'python': which engine a journeys processor runs (for logs)."""
    return "native" if isinstance(journeys, NativeJourneyProcessor) else "python"


__all__ = [
    "NATIVE_AVAILABLE",
    "NativeJourneyOutput",
    "NativeJourneyProcessor",
    "adopt_engine",
    "engine_of",
    "new_journey_stage",
]
