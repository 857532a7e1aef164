"""The online models in a process of their own (streams.models_process) score exactly as in
process: the same scores, event for event, and the same segment stamped on every event, through
merges (a loser's state detached and adopted), a checkpoint's export and load, and a partition
dropped and loaded again. A failed request says why and leaves the process serving; a process
that dies fails what is pending, loudly."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
from typing import Any

import pytest

from online_models.suite import ModelSuite
from processors.chain import JourneyChain
from processors.validation import Source
from simulator.model import SimConfig, simulate
from streams.models_process import Adopt, Detach, ModelsClient, ModelsProcessError
from streams.outputs import score_released
from streams.replay import model_config
from streams.settings import load_settings

BATCH = 400


def _batches(lines: list[bytes], chain: JourneyChain) -> Any:
    for i in range(0, len(lines) + 1, BATCH):
        if i < len(lines):
            yield chain.process([(line, Source("t", 0, i + j))
                                 for j, line in enumerate(lines[i : i + BATCH])])
        else:
            yield chain.finish()


def test_the_models_process_scores_as_the_models_in_process() -> None:
    config = load_settings().processing()
    mconfig = model_config(config)
    lines = simulate(SimConfig(customers=800, seed=3)).lines

    local = ModelSuite(mconfig)
    states: dict[str, Any] = {}
    last: dict[str, Any] = {}
    chain_a = JourneyChain(config, segment_of=lambda c: st.segment if (st := states.get(c))
                           else "all")
    expected = []
    for n, out in enumerate(_batches(lines, chain_a)):
        for merge in out.merges:
            lost = states.pop(merge.loser, None)
            if lost is not None and merge.winner not in states:
                states[merge.winner] = lost
        scores = score_released(local, states, last, out.released)
        expected.append(([ev.segment for ev in out.released], [repr(s) for s in scores],
                         {c: st.segment for c, st in states.items()}))
        if n == 3:  # a checkpoint restored: the states are new objects
            states = pickle.loads(pickle.dumps(states))

    async def run() -> list[Any]:
        client = ModelsClient(functools.partial(ModelSuite, mconfig))
        try:
            chain_b = JourneyChain(config, segment_of=lambda c: client.segment_of(0, c))
            got = []
            for n, out in enumerate(_batches(lines, chain_b)):
                ops = []
                for merge in out.merges:
                    key = (merge.loser, merge.evidence_event_id)
                    ops += [Detach(key, merge.loser), Adopt(merge.winner, stashed=key)]
                result = await client.batch(0, ops, out.released)
                got.append(([ev.segment for ev in out.released],
                            [repr(s) for s in result.scores], dict(client.segments.get(0, {}))))
                if n == 3:
                    data = await client.export(0)
                    await client.drop(0)
                    assert client.segment_of(0, next(iter(states))) == "all"
                    await client.load(0, data)
            assert await client.stop() is not None
            return got
        finally:
            client.close()

    got = asyncio.run(run())
    assert len(got) == len(expected) > 5
    assert sum(len(b[1]) for b in got) > 7000
    assert len({seg for b in got for seg in b[2].values()}) > 1  # segments were assigned
    for n, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a[0] == b[0], f"batch {n}: segments stamped differ"
        assert a[1] == b[1], f"batch {n}: scores differ"
        assert a[2] == b[2], f"batch {n}: the segment mirror differs"


def test_a_transfer_carries_the_detached_state_to_another_models_process() -> None:
    config = model_config(load_settings().processing())
    lines = simulate(SimConfig(customers=60, seed=5)).lines
    chain = JourneyChain(load_settings().processing())
    released = [ev for out in _batches(lines, chain) for ev in out.released]
    loser = released[0].customer_id

    async def run() -> None:
        a = ModelsClient(functools.partial(ModelSuite, config))
        b = ModelsClient(functools.partial(ModelSuite, config))
        try:
            await a.batch(0, [], [ev for ev in released if ev.customer_id == loser])
            got = await a.batch(0, [Detach((loser, "e1"), loser)], [])
            state = got.detached[(loser, "e1")]
            assert state is not None and loser not in a.segments[0]
            await b.batch(1, [Adopt("winner", state=state)], [])
            assert b.segment_of(1, "winner") == pickle.loads(state).segment
            # a detached customer with no state sends none, and adopting none changes nothing
            got = await a.batch(0, [Detach(("nobody", "e2"), "nobody")], [])
            assert got.detached == {("nobody", "e2"): None}
            await b.batch(1, [Adopt("other", state=None)], [])
            assert "other" not in b.segments[1]
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_a_failed_request_says_why_and_the_process_goes_on() -> None:
    config = model_config(load_settings().processing())

    async def run() -> None:
        client = ModelsClient(functools.partial(ModelSuite, config))
        try:
            with pytest.raises(ModelsProcessError, match="unknown request 'nonsense'"):
                await client._ask(("nonsense",))
            with pytest.raises(ModelsProcessError, match=r"UnpicklingError|pickle"):
                await client.load(2, b"not a pickle")
            assert await client.profiles() == []  # still serving
            os.kill(client.process.pid, signal.SIGKILL)
            with pytest.raises(ModelsProcessError, match="exited"):
                await client.export(0)
            with pytest.raises(ModelsProcessError, match="exited"):
                await client.profiles()  # and every later request
            assert await client.stop() is None
        finally:
            client.close()

    asyncio.run(run())


def test_a_suite_that_cannot_be_made_fails_the_start_with_its_reason() -> None:
    with pytest.raises(ModelsProcessError, match=r"(?s)failed to start.*not a journeymap model"):
        ModelsClient(functools.partial(ModelSuite.restore, b"garbage"))
