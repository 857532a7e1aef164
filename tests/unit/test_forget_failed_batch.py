"""A journey batch that fails midway drops the states it changed (streams.app._forget): they
are ahead of what reached Kafka (a transfer computed but never sent would be lost for good), so
the partition is loaded again from its checkpoint and the batch processed again."""

from __future__ import annotations

from types import SimpleNamespace

from processors.chain import JourneyChain
from streams.app import PartitionState, _forget
from tests.unit.test_chain_hold import CONFIG


def test_the_states_a_failed_batch_changed_are_dropped_and_reloaded_later() -> None:
    changed, untouched = PartitionState(JourneyChain(CONFIG)), PartitionState(JourneyChain(CONFIG))
    reassigned_old, reassigned_new = (PartitionState(JourneyChain(CONFIG)),
                                      PartitionState(JourneyChain(CONFIG)))
    runtime = SimpleNamespace(partitions={0: changed, 1: untouched, 2: reassigned_new},
                              forgotten=set())
    # partition 2 was revoked and assigned again while the batch ran: its new state (loaded from
    # the checkpoint) is not the batch's to drop
    _forget(runtime, [(0, changed), (2, reassigned_old)])
    assert runtime.partitions == {1: untouched, 2: reassigned_new}
    assert runtime.forgotten == {0}
