"""The rule for tests that compare a native core with its Python twin: CI must test the core
(scripts/install-deps.sh builds it), so its absence fails there; elsewhere the tests skip with
the import error and how to build it."""

from __future__ import annotations

import os

import pytest


def require_native(available: bool, import_error: str | None, what: str, build: str) -> None:
    """Return if the native core `what` is importable; else fail under CI=true, skip otherwise."""
    if available:
        return
    why = f"the native {what} core is not installed ({import_error}); build it with {build}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test the native {what} core: {why}")
    pytest.skip(why)
