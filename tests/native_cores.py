"""The rule for tests that compare a native core with its Python twin: CI must test the core
(scripts/install-deps.sh builds it), so its absence fails there; elsewhere the tests skip with
the import error and how to build it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from processors.config import IdentityConfig
from processors.identity import IdentityResolver, IdentityStore


def require_native(available: bool, import_error: str | None, what: str, build: str) -> None:
    """Return if the native core `what` is importable; else fail under CI=true, skip otherwise."""
    if available:
        return
    why = f"the native {what} core is not installed ({import_error}); build it with {build}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test the native {what} core: {why}")
    pytest.skip(why)


# -- both identity engines on a store ---------------------------------------------------------

IDENTITY_ENGINES = ("python", "native")
_engine = {"now": "python"}  # the engine `resolver_on` makes (set per test by `identity_engine`)


@pytest.fixture(params=IDENTITY_ENGINES)
def identity_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test once per identity engine: `resolver_on` makes that engine's resolver (the
    native one needs the module: see `require_native`). Import it into a test module and mark
    the module ``pytest.mark.usefixtures("identity_engine")``."""
    from processors import identity_native

    if request.param == "native":
        require_native(identity_native.NATIVE_AVAILABLE, identity_native.NATIVE_IMPORT_ERROR,
                       "identity", "`pip install ./native/identity`")
    _engine["now"] = request.param
    try:
        yield request.param
    finally:
        _engine["now"] = "python"


def resolver_on(config: IdentityConfig, salt: str, store: IdentityStore,
                engine: str | None = None) -> IdentityResolver:
    """The resolver on `store` with identity engine `engine` (default: the test's, see
    `identity_engine`), as the worker makes it."""
    from processors.identity_native import new_resolver

    return new_resolver(config.model_copy(update={"engine": engine or _engine["now"]}), salt,
                        store)
