"""The online models in a process of their own, beside a streaming worker (issue 6).

The models' update is most of a worker's main-thread time: without them a worker drained a
backlog at 14.3k events/s, with them at 6.4k (bench/RESULTS.md, session 23). Python threads
share one interpreter lock, so the models move to a child process, which owns the suite and
every customer's model state; the worker keeps the journeys and sends each partition batch's
released events there.

What crosses the pipe, in order (the child serves one request at a time, in the order sent):

- ``batch``: one partition's model operations of a journey batch, in the order the batch made
  them (a merge's loser detached, a transfer's state adopted), then its released events to
  score. The reply: one :class:`Scores` per event, the detached states (pickled, for the
  transfer messages) and the segment of every customer whose segment may have moved (the
  chain stamps each event with its customer's segment when it arrives, so the worker keeps
  a mirror: :attr:`ModelsClient.segments`).
- ``export``: a partition's model states, pickled, for its checkpoint (taken between batches,
  so the states and the chain's offset agree); ``load`` restores them with the checkpoint,
  ``drop`` forgets a revoked partition.
- ``forget``: customers erased on request; ``profiles``: the segment profiles for the
  `segments` table; ``save``: the models' snapshot under the consumer group; ``stop``.

The child is started with the ``spawn`` method (a fresh interpreter: forking a worker that runs
Kafka client threads is unsafe) from a picklable factory of the suite, so the worker's models
start as before (the group's snapshot, or fresh ones taught the sentiment corpus). A failure in
the child fails the request that met it, with the child's traceback; a child that dies fails
every pending request: the worker stops, as for any failed batch, and a restart resumes from
the checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from online_models.suite import CustomerModelState, ModelSuite, Scores
from processors.errors import JourneymapError
from processors.events import ResolvedEvent

log = logging.getLogger(__name__)

MergeKey = tuple[str, str]


class ModelsProcessError(JourneymapError):
    """The models' process failed a request, or is gone."""


class WireEvent:
    """What the models read of a released event, as it crosses the pipe (a tuple)."""

    __slots__ = ("channel", "properties", "revenue", "session_id", "text", "touchpoint",
                 "ts_ms")

    def __init__(self, ts_ms: int, touchpoint: str, channel: str, session_id: str | None,
                 revenue: float | None, text: str | None, properties: Any) -> None:
        self.ts_ms = ts_ms
        self.touchpoint = touchpoint
        self.channel = channel
        self.session_id = session_id
        self.revenue = revenue
        self.text = text
        self.properties = properties


def wire(released: Sequence[ResolvedEvent]) -> list[tuple[Any, ...]]:
    """Released events as plain tuples (pickled ~10x faster than the pydantic events)."""
    out = []
    for r in released:
        ev = r.event
        out.append((r.customer_id, r.ts_ms, ev.touchpoint, ev.channel, ev.session_id,
                    ev.revenue, ev.text, ev.properties))
    return out


def unwire(rows: Sequence[tuple[Any, ...]]) -> list[ResolvedEvent]:
    return [ResolvedEvent(cid, WireEvent(ts, *rest), ts_ms=ts)  # type: ignore[arg-type]
            for cid, ts, *rest in rows]


@dataclass
class Detach:
    """A merge's loser leaves this partition: its state goes with the transfer."""

    key: MergeKey
    loser: str


@dataclass
class Adopt:
    """A transfer arrived: its state (pickled, or a state detached earlier in the same batch,
    by merge key) becomes the winner's unless the winner has one."""

    winner: str
    state: bytes | None = None
    stashed: MergeKey | None = None


Op = Detach | Adopt


@dataclass
class BatchResult:
    scores: list[Scores]
    detached: dict[MergeKey, bytes | None]
    segments: dict[int, dict[str, str | None]]  # partition -> customer -> segment (None: gone)


@dataclass
class ModelsServer:
    """The child's side: the suite and each partition's model states. No I/O but `save`."""

    suite: ModelSuite
    saver: Callable[[bytes], Any] | None = None
    states: dict[int, dict[str, CustomerModelState]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.suite.track_segments = True

    def batch(self, p: int, ops: Sequence[Op], rows: Sequence[tuple[Any, ...]]) -> BatchResult:
        suite = self.suite
        states = self.states.setdefault(p, {})
        moved: dict[str, str | None] = {}
        detached: dict[MergeKey, bytes | None] = {}
        stash: dict[MergeKey, CustomerModelState | None] = {}
        for op in ops:
            if isinstance(op, Detach):
                state = states.pop(op.loser, None)
                stash[op.key] = state
                detached[op.key] = None if state is None else pickle.dumps(state, protocol=5)
                moved[op.loser] = None
            else:
                state = (stash.pop(op.stashed, None) if op.stashed is not None
                         else None if op.state is None else pickle.loads(op.state))
                if state is not None and op.winner not in states:
                    states[op.winner] = state
                    moved[op.winner] = state.segment
        scores: list[Scores] = []
        suite.segment_moves.clear()
        for ev in unwire(rows):
            cid = ev.customer_id
            state = states.get(cid)
            if state is None:
                state = states[cid] = suite.new_customer()
            s = suite.update(ev, state)
            scores.append(s)
            moved[cid] = s.segment
        out = {p: moved} if moved else {}
        for cid in suite.segment_moves:  # sessions closed by event time: any partition's
            for q, held in self.states.items():
                if (state := held.get(cid)) is not None:
                    out.setdefault(q, {})[cid] = state.segment
                    break
        suite.segment_moves.clear()
        return BatchResult(scores, detached, out)

    def export(self, p: int) -> bytes:
        return pickle.dumps(self.states.get(p, {}), protocol=5)

    def load(self, p: int, data: bytes | None) -> dict[str, str]:
        states = self.states[p] = pickle.loads(data) if data else {}
        return {cid: st.segment for cid, st in states.items()}

    def drop(self, p: int) -> None:
        self.states.pop(p, None)

    def forget(self, p: int, customers: Sequence[str]) -> None:
        held = self.states.get(p, {})
        for cid in customers:
            held.pop(cid, None)

    def profiles(self) -> list[Any]:
        return self.suite.profiles()

    def save(self) -> int:
        data = self.suite.snapshot()
        if self.saver is not None:
            self.saver(data)
        return len(data)

    def handle(self, request: tuple[Any, ...]) -> Any:
        name, *args = request
        if name not in _REQUESTS:
            raise ModelsProcessError(f"unknown request {name!r}")
        return getattr(self, name)(*args)


_REQUESTS = frozenset({"batch", "export", "load", "drop", "forget", "profiles", "save"})


def serve(conn: Any, make_suite: Callable[[], ModelSuite],
          saver: Callable[[bytes], Any] | None) -> None:
    """The child's loop: answer each request with ("ok", result) or ("error", traceback)."""
    try:
        server = ModelsServer(make_suite(), saver)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", server.suite.n_events))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the worker is gone
            return
        if request[0] == "stop":
            try:
                conn.send(("ok", server.save()))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
            return
        try:
            reply = ("ok", server.handle(request))
        except BaseException:
            reply = ("error", traceback.format_exc())
        conn.send(reply)


class ModelsClient:
    """The worker's side: requests in order, replies awaited on the event loop.

    `segments` mirrors each partition's customers' segments (what the chain stamps on events).
    """

    def __init__(self, make_suite: Callable[[], ModelSuite],
                 saver: Callable[[bytes], Any] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, make_suite, saver),
                                   name="journeymap-models", daemon=True)
        self.process.start()
        child.close()
        self.segments: dict[int, dict[str, str]] = {}
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: ModelsProcessError | None = None
        self.n_events = self._first_reply()

    def _first_reply(self) -> int:
        try:
            status, value = self._conn.recv()  # the suite loaded (or not) in the child
        except EOFError:
            raise ModelsProcessError("the models' process exited while starting") from None
        if status != "ok":
            raise ModelsProcessError(f"the models' process failed to start:\n{value}")
        return int(value)

    def segment_of(self, p: int, customer_id: str) -> str:
        return self.segments.get(p, {}).get(customer_id, "all")

    # -- requests ---------------------------------------------------------------------------

    async def batch(self, p: int, ops: Sequence[Op], released: Sequence[ResolvedEvent]
                    ) -> BatchResult:
        result: BatchResult = await self._ask(("batch", p, list(ops), wire(released)))
        for q, moved in result.segments.items():
            mirror = self.segments.setdefault(q, {})
            for cid, seg in moved.items():
                if seg is None:
                    mirror.pop(cid, None)
                else:
                    mirror[cid] = seg
        return result

    async def export(self, p: int) -> bytes:
        return await self._ask(("export", p))  # type: ignore[no-any-return]

    async def load(self, p: int, data: bytes | None) -> None:
        self.segments[p] = await self._ask(("load", p, data))

    async def drop(self, p: int) -> None:
        self.segments.pop(p, None)
        await self._ask(("drop", p))

    async def forget(self, p: int, customers: Sequence[str]) -> None:
        mirror = self.segments.get(p, {})
        for cid in customers:
            mirror.pop(cid, None)
        await self._ask(("forget", p, list(customers)))

    async def profiles(self) -> list[Any]:
        return await self._ask(("profiles",))  # type: ignore[no-any-return]

    async def save(self) -> int:
        return await self._ask(("save",))  # type: ignore[no-any-return]

    async def stop(self) -> int | None:
        """Save the models and end the child; None when it is gone already."""
        if self._failed is not None or not self.process.is_alive():
            self.close()
            return None
        try:
            size: int = await self._ask(("stop",))
        finally:
            self.close()
        return size

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
            self._loop = None
        self._conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    # -- the pipe ---------------------------------------------------------------------------

    async def _ask(self, request: tuple[Any, ...]) -> Any:
        if self._failed is not None:
            raise self._failed
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._conn.fileno(), self._on_readable)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append(fut)
        try:
            self._conn.send(request)
        except OSError as exc:
            self._pending.remove(fut)
            self._fail(ModelsProcessError(f"the models' process is gone ({exc})"))
            raise self._failed from exc  # type: ignore[misc]
        return await fut

    def _on_readable(self) -> None:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._fail(ModelsProcessError(
                f"the models' process exited (exit code {self.process.exitcode}): {exc!r}"))
            return
        fut = self._pending.popleft()
        if fut.done():
            return
        if status == "ok":
            fut.set_result(value)
        else:
            fut.set_exception(ModelsProcessError(f"the models' process failed:\n{value}"))

    def _fail(self, exc: ModelsProcessError) -> None:
        self._failed = exc
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
            self._loop = None
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
