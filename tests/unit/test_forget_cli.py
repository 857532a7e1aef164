"""`journeymap forget` refuses malformed identifiers before touching any store (no I/O)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from streams.cli import cli


@pytest.mark.parametrize("identifier", [
    "ada@example.com",  # no kind
    "phone:123",  # unknown kind
    "email:",  # empty value
    "email:   ",
    "customer_id:c_123",  # malformed customer id
    "customer_id:' OR 1=1 --",
])
def test_malformed_identifiers_are_refused(identifier: str):
    result = CliRunner().invoke(cli, ["forget", identifier])
    assert result.exit_code == 2, result.output
    assert "IDENTIFIER" in result.output
    assert "Traceback" not in result.output
