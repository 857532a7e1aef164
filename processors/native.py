"""The optional native (Rust) cores: importing one, and the error when one is asked for but
cannot be imported.

Each core (``native/identity`` -> ``journeymap_native``, ``native/journeys`` ->
``journeymap_journeys``, ``native/decode`` -> ``journeymap_decode``) has a Python twin with the
same outputs, so a missing module is not an error until a setting asks for the native engine by
name (`<section>.engine = 'native'`).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any, TypeVar

from processors.errors import ConfigError

T = TypeVar("T")


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
