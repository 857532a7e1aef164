"""Cheaper pickling of the slotted dataclasses a worker checkpoints per customer.

Every checkpoint turn pickles each customer's model state and last scores (issue 6). By default
a frozen slotted dataclass pickles through `dataclasses._dataclass_getstate`, which calls
`dataclasses.fields()` for every object (~3-5 µs), and a mutable one as ``(None, {slot:
value})``, a dict written key by key. `@tuple_state` (above ``@dataclass(slots=True)``) makes the
state the fields' values as one tuple, read by one `operator.attrgetter`, and restores either
that or the default forms of objects pickled before (a frozen dataclass's list of values in
field order, a mutable one's ``(None, {slot: value})``). An object with a slot never set (one
restored from a checkpoint older than the field) is pickled as ``{slot: value}`` of the slots it
has, and restored with that slot still unset, as it was.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

T = TypeVar("T")
_UNSET = object()


def tuple_state(cls: type[T]) -> type[T]:
    """Class decorator: `cls` (a slotted dataclass of three fields or more) pickles its fields'
    values as a tuple (see the module's docstring)."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if "__slots__" not in cls.__dict__ or len(names) < 3:
        raise TypeError(f"{cls.__name__}: a slotted dataclass of three fields or more expected")
    values = operator.attrgetter(*names)
    put = object.__setattr__  # (a frozen dataclass's own __setattr__ refuses)
    n = len(names)

    def __getstate__(self: Any) -> tuple[Any, ...] | dict[str, Any]:
        try:
            return values(self)  # type: ignore[no-any-return]
        except AttributeError:  # a slot never set
            return slot_values(self, names)

    def __setstate__(self: Any, state: Any) -> None:
        if isinstance(state, dict):
            items: Any = state.items()
        elif (type(state) is tuple and len(state) == 2 and state[0] is None
              and isinstance(state[1], dict)):  # (None, {slot: value}): a mutable one's default
            items = state[1].items()
        elif len(state) <= n:  # a tuple of this, or the list of a frozen one's default
            items = zip(names, state, strict=False)
        else:
            raise ValueError(f"a pickled {cls.__name__} with {len(state)} fields, expected {n}")
        for k, v in items:
            put(self, k, v)

    cls.__getstate__ = __getstate__  # type: ignore[attr-defined]
    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]
    return cls


def slot_values(obj: object, names: tuple[str, ...]) -> dict[str, object]:
    """`obj`'s fields by name; a slot never set (as in objects restored from older
    checkpoints) is left out, and stays unset when restored."""
    return {name: value for name in names if (value := getattr(obj, name, _UNSET)) is not _UNSET}
