"""Fast construction of frozen slotted dataclasses on the models' per-event path.

A frozen dataclass's `__init__` sets each field with `object.__setattr__` (its own `__setattr__`
refuses): ~0.3-0.5 us a field, 4-7 us for the 12 fields of `Scores`, a few % of the models' time
per event. `maker(cls)` returns a function with `cls`'s positional signature that fills an
instance of a mutable twin (the same slots, in the same order: the same memory layout) with
plain slot stores and then makes it a `cls`: the object is a `cls` in every respect (type,
equality, hash, frozenness, pickling), built several times faster. `cls(...)` itself is left as
it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """A constructor of `cls` (a `@dataclass(frozen=True, slots=True)` without `__post_init__`
    or init-only fields) equal to `cls(...)`, taking the same arguments."""
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    if not (frozen and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__} is not a frozen slotted dataclass")
    if hasattr(cls, "__post_init__") or any(not f.init for f in params):
        raise TypeError(f"{cls.__name__}: only plain fields can be made this way")
    namespace: dict[str, Any] = {"__annotations__": {f.name: f.type for f in params}}
    for f in params:
        if f.default is not dataclasses.MISSING:
            namespace[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f.name] = dataclasses.field(default_factory=f.default_factory)
    twin: Any = dataclasses.dataclass(slots=True)(type(f"_{cls.__name__}Twin", (), namespace))
    if twin.__slots__ != cls.__slots__ or cls.__base__ is not object:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: its twin would not share its layout")

    def make(*args: Any, **kwargs: Any) -> T:
        obj = twin(*args, **kwargs)
        obj.__class__ = cls  # same slots, same layout: allowed, and now frozen
        return obj  # type: ignore[return-value]

    make.__name__ = f"make_{cls.__name__}"
    make.__doc__ = f"`{cls.__name__}(...)`, built faster (online_models.frozen)."
    return make
