"""`syncd mailbox`: enrol mailboxes and manage their enrolment."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Mailbox
from syncd.backends.dropdir import POST_ACTIONS
from syncd.cli.context import App, pass_app, print_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group("mailbox")
def mailbox_group() -> None:
    """Enrol, list, disable, enable and remove mailboxes."""


@mailbox_group.command("enroll")
@click.argument("address")
@click.option("--backend", type=click.Choice(["folder"]), required=True, help="How syncd reaches the mailbox.")
@click.option("--path", type=click.Path(path_type=Path), help="Drop directory (backend folder).")
@click.option(
    "--post-action",
    type=click.Choice(POST_ACTIONS),
    default="move",
    show_default=True,
    help="What happens to a file once it is recorded: keep it, move it to processed/, or delete it.",
)
@click.option("--role", type=click.Choice(["sync", "inbound"]), default="sync", show_default=True,
              help="sync: a user's own mailbox; inbound: a shared mailbox users forward mails to.")
@pass_app
def enroll(app: App, address: str, backend: str, path: Path | None, post_action: str, role: str) -> None:
    """Enrol the mailbox ADDRESS so that passes sync it."""
    if path is None:
        raise click.UsageError("--backend folder needs --path DIR")
    directory = path.expanduser().resolve()
    if not directory.is_dir():
        raise InvalidInputError(f"drop directory {str(path)!r} does not exist: create it first")

    with app.transaction() as session:
        if session.scalar(select(Mailbox).where(Mailbox.address == address.lower())) is not None:
            raise InvalidInputError(f"mailbox {address!r} is already enrolled: see `syncd mailbox list`")
        session.add(
            Mailbox(
                address=address.lower(),
                backend=backend,
                role=role,
                config={"path": str(directory), "post_action": post_action},
            )
        )
    click.echo(f"enrolled {address.lower()} ({backend}, {role}) at {directory}")


@mailbox_group.command("list")
@json_option
@pass_app
def list_mailboxes(app: App, as_json: bool) -> None:
    """List enrolled mailboxes."""
    with app.sessions() as session:
        rows = [
            {
                "address": m.address,
                "backend": m.backend,
                "role": m.role,
                "enabled": m.enabled,
                "state": m.state if m.enabled else "disabled",
                "config": m.config,
            }
            for m in session.scalars(select(Mailbox).order_by(Mailbox.address))
        ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no mailboxes enrolled: see `syncd mailbox enroll --help`")
    for row in rows:
        where = row["config"].get("path") or row["config"].get("endpoint") or ""
        click.echo(f"{row['address']}  {row['backend']}  {row['role']}  {row['state']}  {where}")


def _set_enabled(app: App, address: str, enabled: bool) -> None:
    with app.transaction() as session:
        mailbox = _get(session, address)
        mailbox.enabled = enabled
    click.echo(f"{'enabled' if enabled else 'disabled'} {address.lower()}")


@mailbox_group.command("disable")
@click.argument("address")
@pass_app
def disable(app: App, address: str) -> None:
    """Stop syncing ADDRESS; its cursor and history stay."""
    _set_enabled(app, address, False)


@mailbox_group.command("enable")
@click.argument("address")
@pass_app
def enable(app: App, address: str) -> None:
    """Sync ADDRESS again from where it stopped."""
    _set_enabled(app, address, True)


@mailbox_group.command("remove")
@click.argument("address")
@pass_app
def remove(app: App, address: str) -> None:
    """Remove the enrolment of ADDRESS; mail already filed stays filed."""
    with app.transaction() as session:
        session.delete(_get(session, address))
    click.echo(f"removed {address.lower()}")


def _get(session: Session, address: str) -> Mailbox:
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address.lower()))
    if mailbox is None:
        raise NotFoundError(f"mailbox {address!r} is not enrolled: see `syncd mailbox list`")
    return mailbox


COMMANDS = [mailbox_group]
