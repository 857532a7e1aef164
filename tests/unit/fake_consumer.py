"""A stand-in for Faust's consumer as streams.app uses it when it seeks: aiokafka's seek runs
on the consumer's own thread (a real thread with its own event loop, as Faust's
ConsumerThread), reached through `call_thread`. No Kafka."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class ConsumerThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.seeks: list[tuple[Any, int]] = []
        self.seek_threads: list[threading.Thread] = []

    async def call_thread(self, fun: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return fun(*args)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    def seek(self, tp: Any, offset: int) -> None:  # aiokafka's: touches the fetcher's state
        self.seeks.append((tp, offset))
        self.seek_threads.append(threading.current_thread())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Consumer:
    def __init__(self, assigned: set[Any] | None = None) -> None:
        self._thread = ConsumerThread()
        self._read_offset: dict[Any, int | None] = {}
        self.assigned = assigned or set()

    def assignment(self) -> set[Any]:
        return self.assigned

    @property
    def seeks(self) -> list[tuple[Any, int]]:
        return self._thread.seeks

    async def seek(self, tp: Any, offset: int) -> None:
        raise AssertionError("Faust's Consumer.seek runs aiokafka's seek on the caller's thread")
