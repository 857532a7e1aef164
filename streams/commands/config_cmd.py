"""`journeymap config`: check the configuration and show the values in force."""

from __future__ import annotations

import click
import orjson

from streams.cli import settings_from


@click.command("config")
@click.option("--show-secrets", is_flag=True, help="Print secrets in clear, not '**********'.")
@click.pass_context
def config_cmd(ctx: click.Context, show_secrets: bool) -> None:
    """Validate journeymap.toml plus JOURNEYMAP_* variables and print the settings in force.

    Exits with status 2 and names each bad field when the configuration is invalid.
    """
    settings = settings_from(ctx)
    mode = "json" if not show_secrets else "python"
    data = settings.model_dump(mode=mode)
    if show_secrets:
        data["identity_salt"] = settings.identity_salt.get_secret_value()
        data["clickhouse"]["password"] = settings.clickhouse.password.get_secret_value()
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
