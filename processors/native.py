"""The optional native (Rust) cores: importing one, and the error when one is asked for but
cannot be imported.

Each core (``native/identity`` -> ``journeymap_native``, ``native/journeys`` ->
``journeymap_journeys``, ``native/decode`` -> ``journeymap_decode``) has a Python twin with the
same outputs, so a missing module is not an error until a setting asks for the native engine by
name (`<section>.engine = 'native'`).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from importlib import import_module
from types import ModuleType
from typing import Any, Generic, TypeVar

from processors.errors import ConfigError

T = TypeVar("T")
V = TypeVar("V")

_MISSING: Any = object()


def import_core(module: str) -> tuple[ModuleType | None, str | None]:
    """The core's module, or None and why it cannot be imported."""
    try:
        return import_module(module), None
    except ImportError as exc:
        return None, str(exc)


def not_built(section: str, core: str, module: str, error: str | None, build: str) -> ConfigError:
    """`<section>.engine = 'native'` without the module: what failed and how to build it
    (`build`: the command) or choose another engine."""
    return ConfigError(
        f"{section}.engine = 'native' but the native {core} core (Python module {module}) "
        f"cannot be imported ({error}): build it with {build} (needs Rust's cargo; "
        f"scripts/install-deps.sh does it), or set {section}.engine to 'auto' or 'python' "
        f"(env JOURNEYMAP_{section.upper()}__ENGINE)"
    )


def journeys_class(name: str) -> tuple[Any, str | None]:
    """A class of the journeys core (``journeymap_journeys``), or None and why: the module is
    not installed, or it was built before the class existed."""
    module, error = import_core("journeymap_journeys")
    cls = getattr(module, name, None)
    if cls is None and error is None:
        error = f"the installed journeymap_journeys has no {name} (built before it): rebuild it"
    return cls, error


def journeys_not_built(error: str | None) -> ConfigError:
    """`journey.engine = 'native'` without (a class of) the journeys core."""
    return not_built("journey", "journeys", "journeymap_journeys", error,
                     "scripts/build-native.sh")


def with_state(cls: type[T], state: dict[str, Any]) -> T:
    """An instance of `cls` holding `state` as its attributes, without `__init__`: what a
    native twin's unpickling starts from (its own Python class, or the Python twin's where the
    module is missing)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


class NativeMap(MutableMapping[str, V], Generic[V]):
    """Per-customer state kept in a native core's ordered map, seen as the dict the Python twin
    keeps (same keys, order and values). Values are copies made on each read: change one by
    setting it again. Pickles as that plain dict. The core has ``get``, ``set``, ``pop`` (None
    when absent), ``keys``, ``items``, ``len`` and ``in`` over customer ids."""

    __slots__ = ("_core",)

    def __init__(self, core: Any) -> None:
        self._core = core

    def __getitem__(self, customer_id: str) -> V:
        value = self.get(customer_id)
        if value is None:
            raise KeyError(customer_id)
        return value  # type: ignore[no-any-return]

    def get(self, customer_id: str, default: Any = None) -> Any:
        value = self._core.get(customer_id) if isinstance(customer_id, str) else None
        return default if value is None else value

    def __setitem__(self, customer_id: str, value: V) -> None:
        self._core.set(customer_id, value)

    def __delitem__(self, customer_id: str) -> None:
        self.pop(customer_id)

    def pop(self, customer_id: str, default: Any = _MISSING) -> Any:
        value = self._core.pop(customer_id) if isinstance(customer_id, str) else None
        if value is None:
            if default is _MISSING:
                raise KeyError(customer_id)
            return default
        return value

    def __contains__(self, customer_id: object) -> bool:
        return isinstance(customer_id, str) and customer_id in self._core

    def __iter__(self) -> Iterator[str]:
        return iter(self._core.keys())

    def __len__(self) -> int:
        return len(self._core)

    def items(self) -> list[tuple[str, V]]:  # type: ignore[override]
        return self._core.items()  # type: ignore[no-any-return]

    def values(self) -> list[V]:  # type: ignore[override]
        return [value for _, value in self._core.items()]

    def copy(self) -> dict[str, V]:
        return dict(self._core.items())

    def __repr__(self) -> str:
        return repr(self.copy())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._core.items(),))
