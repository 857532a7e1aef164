#!/usr/bin/env python
"""Write .env.example from streams/settings.py: every setting, its JOURNEYMAP_* name and default.

    python scripts/gen-env-example.py           rewrite .env.example
    python scripts/gen-env-example.py --check   exit 1 when .env.example is out of date (CI)

Every line is commented out except the connection settings docker-compose needs: an active line
would override journeymap.toml (the environment wins), so copy only what you mean to change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from streams.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".env.example"
# Active in the example: what docker-compose.yml and a local `journeymap worker` both read.
ACTIVE = {
    "JOURNEYMAP_KAFKA__BOOTSTRAP_SERVERS",
    "JOURNEYMAP_REDIS__URL",
    "JOURNEYMAP_CLICKHOUSE__URL",
    "JOURNEYMAP_CLICKHOUSE__USER",
    "JOURNEYMAP_CLICKHOUSE__PASSWORD",
}
OVERRIDES = {  # example values that differ from the code defaults, with the reason
    "JOURNEYMAP_CLICKHOUSE__URL": (
        "http://127.0.0.1:8123",
        "a server (what `journeymap services up` and docker-compose run); a path means chDB",
    ),
    "JOURNEYMAP_CLICKHOUSE__PASSWORD": (
        "journeymap",
        "docker-compose gives the ClickHouse image this password; `services up` ignores it",
    ),
}
HEADER = """\
# Every journeymap setting as an environment variable, with its default. Generated from
# streams/settings.py by scripts/gen-env-example.py; do not edit by hand.
#
# Precedence: environment > journeymap.toml > defaults. Nested groups use a double underscore.
# Lists and tables are JSON. Copy this file to .env (docker-compose reads it) and uncomment only
# what you change: an uncommented line overrides journeymap.toml.
"""


def _render(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _lines(model: BaseModel, prefix: str) -> list[str]:
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        env = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel) and not isinstance(value, SecretStr):
            out.append(f"\n# [{name}]" if prefix == ENV_PREFIX else f"# [{env}]")
            out.extend(_lines(value, env + "__"))
            continue
        if prefix == ENV_PREFIX:
            out.append(f"\n# [{name}]")
        shown, why = OVERRIDES.get(env, (_render(value), None))
        if why:
            out.append(f"# {why} (default: {_render(value) or '(empty)'})")
        elif field.description:
            out.append(f"# {field.description}")
        out.append(f"{'' if env in ACTIVE else '# '}{env}={shown}")
    return out


def render() -> str:
    return HEADER + "\n".join(_lines(Settings.model_construct(), ENV_PREFIX)) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(".env.example is out of date: run python scripts/gen-env-example.py", flush=True)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
