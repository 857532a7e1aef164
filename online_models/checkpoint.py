"""Versioned, self-describing model checkpoints: a header, then a pickle.

Layout: ``b"JMOM"`` magic, one byte format version, one byte length of the kind name, the kind
name (ASCII, e.g. ``b"PropensityModel"``), then the pickled object. Loading checks all three
before unpickling, so a checkpoint of another model or a future format fails loudly instead of
restoring nonsense. Checkpoints are pickles: load only the ones this deployment wrote.
"""

from __future__ import annotations

import pickle
from typing import Any, Final, TypeVar

from processors.errors import CheckpointError

MAGIC: Final = b"JMOM"
FORMAT_VERSION: Final = 1

T = TypeVar("T")


def dumps(obj: Any) -> bytes:
    """A checkpoint of `obj`, tagged with its class name and the format version."""
    kind = type(obj).__name__.encode("ascii")
    return MAGIC + bytes([FORMAT_VERSION, len(kind)]) + kind + pickle.dumps(obj, protocol=5)


def loads(data: bytes, cls: type[T]) -> T:
    """The object in a checkpoint written by :func:`dumps`, checked to be a `cls`."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise CheckpointError("not a journeymap model checkpoint (bad magic bytes)")
    version, n = data[4], data[5]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version}, this code reads {FORMAT_VERSION}; "
            "retrain or restore with the matching journeymap version"
        )
    kind = data[6 : 6 + n].decode("ascii", "replace")
    if kind != cls.__name__:
        raise CheckpointError(f"checkpoint holds a {kind}, expected a {cls.__name__}")
    try:
        obj = pickle.loads(data[6 + n :])
    except Exception as exc:  # a truncated or corrupt pickle raises many kinds of errors
        raise CheckpointError(f"checkpoint of {kind} is corrupt: {exc}") from exc
    if not isinstance(obj, cls):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected {cls.__name__}")
    return obj


class Snapshotting:
    """Mixin: `snapshot()` -> checkpoint bytes, `Cls.restore(bytes)` -> an equal model."""

    __slots__ = ()

    def snapshot(self) -> bytes:
        return dumps(self)

    @classmethod
    def restore(cls: type[T], data: bytes) -> T:
        return loads(data, cls)
