"""`syncd unmatched`: the queue of mails that could not be filed."""

from __future__ import annotations

import click
from sqlalchemy import select

from crmstore.models import UnmatchedMail
from crmstore.refs import parse_ref
from syncd import review
from syncd.cli.context import App, pass_app, print_json


@click.group("unmatched")
def unmatched_group() -> None:
    """List, assign and dismiss mails that could not be filed."""


@unmatched_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include assigned and dismissed mails.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_unmatched(app: App, show_all: bool, as_json: bool) -> None:
    """List waiting mails with the reason each was not filed."""
    query = select(UnmatchedMail).order_by(UnmatchedMail.id)
    if not show_all:
        query = query.where(UnmatchedMail.state == "open")
    with app.sessions() as session:
        rows = [
            {
                "id": entry.id,
                "message_id": entry.message_id,
                "subject": entry.subject,
                "from": entry.sender,
                "reason": entry.reason,
                "outcome": entry.outcome,
                "detail": entry.detail,
                "state": entry.state,
            }
            for entry in session.scalars(query)
        ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no unmatched mail")
    for row in rows:
        detail = f": {row['detail']}" if row["detail"] else ""
        click.echo(f"{row['id']:>5}  {row['reason']}{detail}  {row['from'] or '-'}  {row['subject']}")


@unmatched_group.command("assign")
@click.argument("unmatched_id", metavar="ID", type=int)
@click.argument("ref")
@pass_app
def assign(app: App, unmatched_id: int, ref: str) -> None:
    """File the waiting mail ID against REF (e.g. offer:3)."""
    target = parse_ref(ref)
    with app.transaction() as session:
        correspondence = review.assign(session, unmatched_id, target)
    click.echo(f"filed unmatched mail {unmatched_id} against {target} as correspondence {correspondence.id}")


@unmatched_group.command("dismiss")
@click.argument("unmatched_id", metavar="ID", type=int)
@pass_app
def dismiss(app: App, unmatched_id: int) -> None:
    """Take the mail ID off the list; it stays in the database."""
    with app.transaction() as session:
        review.dismiss(session, unmatched_id)
    click.echo(f"dismissed unmatched mail {unmatched_id}")


COMMANDS = [unmatched_group]
