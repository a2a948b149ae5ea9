"""Entry point of the `syncd` command."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.exc import OperationalError

from crmstore.errors import StoreError
from syncd.cli import (
    correspondence,
    crm,
    database,
    mailbox,
    person,
    status,
    sync,
    unmatched,
)
from syncd.cli.context import App
from syncd.errors import SyncdError
from syncd.logsetup import configure_logging


class SyncdGroup(click.Group):
    """Shows syncd's own errors as one line, `Error: …`, with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SyncdError, StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(f"database error: {reason}") from exc


@click.group(cls=SyncdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Settings file; default: $SYNCD_CONFIG, ./settings.toml, /etc/syncd/settings.toml.",
)
@click.version_option(package_name="syncd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """File email correspondence into the CRM by tracking code."""
    app = App(config_path)
    ctx.obj = app
    configure_logging(app.settings.log_level, app.settings.log_format)


for module in (database, crm, mailbox, sync, correspondence, unmatched, person, status):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="syncd")
