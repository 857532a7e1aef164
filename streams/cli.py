"""The `journeymap` command line. Each command lives in `streams/commands/<name>.py`."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

import click

from processors.errors import JourneymapError

# name -> (module under streams.commands, attribute). A command appears once its module exists.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "demo"),
    "simulate": ("simulate", "simulate"),
    "replay": ("replay", "replay"),
    "report": ("report", "report"),
    "query": ("query", "query"),
    "migrate": ("migrate", "migrate"),
    "services": ("services", "services"),
    "topics": ("topics", "topics"),
    "worker": ("worker", "worker"),
    "alerts": ("alerts", "alerts"),
    "evaluate": ("evaluate", "evaluate"),
    "dashboard": ("dashboard", "dashboard"),
    "forget": ("forget", "forget"),
    "experiments": ("experiments", "experiments"),
    "config": ("config_cmd", "config_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name
            for name, (module, _) in COMMANDS.items()
            if importlib.util.find_spec(f"streams.commands.{module}") is not None
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name]
        if importlib.util.find_spec(f"streams.commands.{module_name}") is None:
            return None
        module = importlib.import_module(f"streams.commands.{module_name}")
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: ./journeymap.toml if present; env JOURNEYMAP_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Log verbosity (default: the `log_level` setting, INFO).",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, log_level: str | None) -> None:
    """journeymap: streaming customer-journey analytics.

    Start with `journeymap demo`: it simulates customers, replays their events through the
    whole pipeline into embedded ClickHouse and prints the journey map. Every command has --help.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    logging.basicConfig(
        level=(log_level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def settings_from(ctx: click.Context, **overrides: Any) -> Any:
    """Load the settings for a command; a bad config exits with the message, not a traceback."""
    from streams.settings import load_settings

    root = ctx.find_root()
    config_file = (root.obj or {}).get("config_file")
    return load_settings(config_file, **overrides)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except JourneymapError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
