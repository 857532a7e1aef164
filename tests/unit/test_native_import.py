"""The optional native cores: importing one, and the error when it is asked for but missing."""

from __future__ import annotations

import pytest

from processors.errors import ConfigError
from processors.native import import_core, not_built


def test_a_missing_core_imports_as_none_with_the_reason() -> None:
    module, error = import_core("journeymap_no_such_core")
    assert module is None
    assert error is not None and "journeymap_no_such_core" in error


def test_an_importable_module_comes_back_without_a_reason() -> None:
    module, error = import_core("json")
    assert module is not None and module.__name__ == "json"
    assert error is None


def test_the_not_built_error_names_the_failure_the_build_and_the_other_engines() -> None:
    err = not_built("journey", "journeys", "journeymap_journeys", "No module named 'x'",
                    "scripts/build-native.sh")
    assert isinstance(err, ConfigError)
    with pytest.raises(ConfigError, match=r"journey\.engine = 'native' .*journeymap_journeys.*"
                                          r"No module named 'x'.*scripts/build-native\.sh.*"
                                          r"'auto' or 'python'.*JOURNEYMAP_JOURNEY__ENGINE"):
        raise err


def test_decode_engines_without_the_decode_core(monkeypatch: pytest.MonkeyPatch) -> None:
    from processors import validation

    monkeypatch.setattr(validation, "_NATIVE", None)
    assert validation.decode_engine("auto") == "python"
    assert validation.decode_engine("python") == "python"
    with pytest.raises(ConfigError, match=r"decode\.engine = 'native'.*journeymap_decode.*"
                                          r"JOURNEYMAP_DECODE__ENGINE"):
        validation.decode_engine("native")
    raw = b'{"event_id":"e","occurred_at":1772000000000,"channel":"web","touchpoint":"t",' \
          b'"identities":{"email":"x"}}'
    accepted, dead = validation.decode_batch([(raw, validation.Source())])
    assert len(accepted) == 1 and not dead  # the Python path alone
