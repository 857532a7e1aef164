"""Where one event's latency goes inside the worker (bench_streaming.py --trace).

Loaded into the worker process by bench/trace/sitecustomize.py when JOURNEYMAP_BENCH_TRACE
names a file. It wraps module-level functions of streams.app (nothing in the repository's
worker changes) and appends one JSON line per step to the file, with the wall time and the
event ids concerned:

    ingest_taken     decode_batch called: the ingest agent's take returned
    ingest_done      _observe("ingest"): resolved, rows written, re-keyed events acknowledged
    journey_taken    _journey_batch called for a partition's share of a batch
    released         _journey_batch returned: the events the chain released (past the hold)
    write_start/end  _write: ClickHouse flush of everything buffered (ids of touchpoints rows)
    delivered        _deliver(runtime.outputs) returned: scores and alerts acknowledged
    journey_done     _observe("journey"): batch finished (checkpoint started if due)
    *_refit, *_end   the online models' periodic refits (start and end), inside a journey batch
    checkpoint_fork, heap_freeze (and *_end)  a checkpoint turn's fork, the heap freeze before it
    blocked          the event loop has not run for 0.3 s: the main thread's innermost frames

Lines are written unbuffered (one os.write each): the worker forks checkpoint children.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import orjson


def _ids_of_messages(batch: Any) -> list[str]:
    """The event ids in a batch of messages: raw events, or envelopes of them."""
    from streams.envelope import H_EVENTS, EnvelopeError, unpack

    ids = []
    for ev in batch:
        value = ev.message.value
        headers = dict(ev.message.headers or ())
        if headers.get("jm-type") == H_EVENTS:
            try:
                values = [v for _, v in unpack(value)]
            except EnvelopeError:
                continue
        else:
            values = [value]
        for value in values:
            if value and value[:1] == b"{":
                try:
                    event_id = orjson.loads(value).get("event_id")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event_id, str):
                    ids.append(event_id)
    return ids


def install(path: str) -> None:
    import streams.app as app

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(stage: str, ids: list[str], t: float | None = None) -> None:
        os.write(fd, orjson.dumps({"s": stage, "t": t or time.time(), "ids": ids}) + b"\n")

    decode_batch = app.decode_batch

    @functools.wraps(decode_batch)
    def traced_decode_batch(pairs: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.time()
        accepted, dead = decode_batch(pairs, *args, **kwargs)
        emit("ingest_taken", [a.event.event_id for a in accepted], t)
        return accepted, dead

    observe = app._observe

    @functools.wraps(observe)
    def traced_observe(runtime: Any, agent: str, batch: Any, next_of: Any) -> None:
        if not started:
            import asyncio

            started.append(asyncio.ensure_future(heartbeat()))
        emit(f"{agent}_done", _ids_of_messages(batch))
        observe(runtime, agent, batch, next_of)

    journey_batch = app._journey_batch

    @functools.wraps(journey_batch)
    def traced_journey_batch(runtime: Any, part: Any, events: Any, **kwargs: Any) -> Any:
        emit("journey_taken", _ids_of_messages(events))
        result = journey_batch(runtime, part, events, **kwargs)
        emit("released", [ev.event.event_id for ev in result[0].released])
        return result

    write = app._write

    @functools.wraps(write)
    async def traced_write(runtime: Any, *rows: Any, **kwargs: Any) -> None:
        ids = [r["event_id"] for table in rows for r in table.get("touchpoints", ())]
        emit("write_start", ids)
        await write(runtime, *rows, **kwargs)
        emit("write_end", ids)

    deliver = app._deliver

    @functools.wraps(deliver)
    async def traced_deliver(producer: Any) -> None:
        await deliver(producer)
        if producer.__dict__.get("_jm_outputs"):
            emit("delivered", [])

    original_runtime_init = app.Runtime.__init__

    @functools.wraps(original_runtime_init)
    def runtime_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_runtime_init(self, *args, **kwargs)
        self.outputs._jm_outputs = True

    def timed(cls: Any, name: str, stage: str) -> None:
        method = getattr(cls, name)

        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.time()
            try:
                return method(self, *args, **kwargs)
            finally:
                emit(stage, [], t)
                emit(f"{stage}_end", [])

        setattr(cls, name, run)

    # the models' periodic refits run inside a journey batch (issue 7): seen as stalls
    from online_models.propensity import PropensityModel
    from online_models.segments import SegmentModel
    from sinks.checkpoints import CheckpointStore

    timed(CheckpointStore, "save_turn_in_child", "checkpoint_fork")  # partitions and models
    timed(app.HeapFreezer, "freeze", "heap_freeze")
    timed(PropensityModel, "_refit", "propensity_refit")
    timed(SegmentModel, "refit", "segments_refit")
    timed(SegmentModel, "refit_short", "segments_refit_short")
    # The event loop blocked: a thread samples the main thread's stack when the loop has not
    # run a 20 ms heartbeat for 0.3 s ("blocked", the stack's innermost frames as ids).
    import sys
    import threading
    import traceback

    beat = [0.0]

    async def heartbeat() -> None:
        import asyncio

        while True:
            beat[0] = time.time()
            await asyncio.sleep(0.02)

    def sampler() -> None:
        main = threading.main_thread().ident
        sampled_at = 0.0
        while True:
            time.sleep(0.05)
            now = time.time()
            if beat[0] and now - beat[0] > 0.3 and now - sampled_at > 0.25:
                sampled_at = now
                frame = sys._current_frames().get(main)
                if frame is not None:
                    stack = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                             for f in traceback.extract_stack(frame)[-12:]]
                    emit("blocked", stack)

    threading.Thread(target=sampler, daemon=True).start()
    started = []

    app.decode_batch = traced_decode_batch
    app._observe = traced_observe
    app._journey_batch = traced_journey_batch
    app._write = traced_write
    app._deliver = traced_deliver
    app.Runtime.__init__ = runtime_init
