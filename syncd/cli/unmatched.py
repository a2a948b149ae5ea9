"""`syncd unmatched`: the queue of mails that could not be filed."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import crm as store
from crmstore.models import UnmatchedMail
from crmstore.refs import parse_ref
from syncd import review
from syncd.cli.context import App, pass_app, print_json
from syncd.suggest import suggest


@click.group("unmatched")
def unmatched_group() -> None:
    """List, assign, dismiss and reopen mails that could not be filed."""


@unmatched_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include assigned and dismissed mails.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_unmatched(app: App, show_all: bool, as_json: bool) -> None:
    """List waiting mails with the reason each was not filed and the records they may belong to.

    Candidates are suggested for open, unmatched mails: a record a later
    mail of the same thread was filed against, a record of the sender's
    organisation whose title resembles the subject, and the other records
    of that organisation.
    """
    query = select(UnmatchedMail).order_by(UnmatchedMail.id)
    if not show_all:
        query = query.where(UnmatchedMail.state == "open")
    with app.sessions() as session:
        rows = [_as_json(session, entry) for entry in session.scalars(query)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no unmatched mail")
    for row in rows:
        detail = f": {row['detail']}" if row["detail"] else ""
        state = f"  [{row['state']}]" if show_all else ""
        click.echo(f"{row['id']:>5}  {row['reason']}{detail}  {row['from'] or '-'}  {row['subject']}{state}")
        if row["candidates"]:
            found = ", ".join(
                f"{c['ref']} {c['title']!r} ({c['reason']} {c['score']:.2f})" for c in row["candidates"]
            )
            click.echo(f"       candidates: {found}")


def _as_json(session: Session, entry: UnmatchedMail) -> dict[str, Any]:
    # NOTE: suggesting parses each open mail again, so a queue of thousands
    # of mails lists slowly.
    suggestions = suggest(session, entry) if _wants_suggestions(entry) else []
    return {
        "id": entry.id,
        "message_id": entry.message_id,
        "subject": entry.subject,
        "from": entry.sender,
        "reason": entry.reason,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "state": entry.state,
        "candidates": [
            {"ref": str(s.ref), "title": store.entity_name(session, s.ref), "reason": s.reason, "score": s.score}
            for s in suggestions
        ],
    }


def _wants_suggestions(entry: UnmatchedMail) -> bool:
    # A failed mail waits for a fix of its content, not for a record.
    return entry.state == "open" and entry.outcome == "unmatched"


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


@unmatched_group.command("reopen")
@click.argument("unmatched_id", metavar="ID", type=int)
@pass_app
def reopen(app: App, unmatched_id: int) -> None:
    """Put the dismissed mail ID back on the list."""
    with app.transaction() as session:
        review.reopen(session, unmatched_id)
    click.echo(f"reopened unmatched mail {unmatched_id}")


COMMANDS = [unmatched_group]
