"""The Kafka cluster id `journeymap services up` formats the broker's storage with."""

from __future__ import annotations

import base64

from streams.services import _kafka_cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_start_with_a_dash() -> None:
    # One random id in 64 starts with "-", which `kafka-storage format -t ID` reads as an
    # option: a fresh CI machine failed to start Kafka on one.
    ids = [_kafka_cluster_id() for _ in range(5_000)]
    assert not [cid for cid in ids if cid.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(cid + "==")) == 16 for cid in ids)
    assert len(set(ids)) == len(ids)
