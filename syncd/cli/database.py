"""`syncd db`: the store's schema."""

from __future__ import annotations

import click

from crmstore import db
from syncd.cli.context import App, pass_app


@click.group("db")
def db_group() -> None:
    """Create or migrate the database."""


@db_group.command("upgrade")
@pass_app
def upgrade(app: App) -> None:
    """Apply the schema migrations; safe to run again."""
    url = app.settings.resolved_database_url()
    engine = db.create_store_engine(url, create=True)
    before = db.current_revision(engine)
    db.upgrade(engine)
    after = db.current_revision(engine)
    engine.dispose()
    if before == after:
        click.echo(f"database {db.masked_url(url)} is up to date (revision {after})")
    else:
        click.echo(f"database {db.masked_url(url)} upgraded from {before or 'empty'} to {after}")


COMMANDS = [db_group]
