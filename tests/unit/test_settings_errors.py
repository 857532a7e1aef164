"""A bad or unknown setting stops a command at start with the field, the value and where to fix
it; nothing in the settings is silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.errors import ConfigError
from streams.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_setting_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # (worker.store was such a setting: it did nothing, and was removed)
    monkeypatch.setenv("JOURNEYMAP_WORKER__STORE", "rocksdb://")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "worker.store: unknown setting" in message
    assert "'rocksdb://'" in message and "JOURNEYMAP_WORKER__STORE" in message
    assert ".env.example" in message and (ROOT / ".env.example").is_file()


def test_an_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "journeymap.toml"
    config.write_text('[worker]\nbatch_max = 500\nbatchmax = 50\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    message = str(err.value)
    assert str(config) in message
    assert "worker.batchmax: unknown setting" in message and "(got 50)" in message


def test_every_variable_of_the_env_example_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # each documented variable, set to its documented default, loads
    names = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.removeprefix("# ")
        if line.startswith("JOURNEYMAP_") and "=" in line:
            name, _, value = line.partition("=")
            if value not in ("", "None"):
                names.append(name)
                monkeypatch.setenv(name, value)
    assert len(names) > 40
    load_settings()


def test_a_lateness_finer_than_a_millisecond_is_refused_at_start(monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.setenv("JOURNEYMAP_JOURNEY__ALLOWED_LATENESS_S", "0.0004")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "journey.allowed_lateness_s" in message and "whole number of milliseconds" in message
    assert "JOURNEYMAP_JOURNEY__ALLOWED_LATENESS_S" in message
    monkeypatch.setenv("JOURNEYMAP_JOURNEY__ALLOWED_LATENESS_S", "0.25")
    assert load_settings().journey.allowed_lateness_ms == 250
