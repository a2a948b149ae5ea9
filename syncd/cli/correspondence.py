"""`syncd correspondence`: what has been filed, and where."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from crmstore import crm as store
from crmstore.errors import InvalidInputError
from crmstore.models import Correspondence, CorrespondenceLink
from crmstore.refs import parse_ref
from syncd.cli.context import App, pass_app, print_json


@click.group("correspondence")
def correspondence_group() -> None:
    """Show filed correspondence."""


@correspondence_group.command("list")
@click.option("--record", "record_ref", metavar="REF", help="Only mail filed against this record, e.g. offer:3.")
@click.option("--organisation", "organisation_id", type=int, help="Only mail filed against this organisation ID.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_correspondence(app: App, record_ref: str | None, organisation_id: int | None, as_json: bool) -> None:
    """List filed correspondence, newest first."""
    query = (
        select(Correspondence)
        .options(selectinload(Correspondence.links), selectinload(Correspondence.sources))
        .order_by(Correspondence.sent_at.desc(), Correspondence.id.desc())
    )
    with app.sessions() as session:
        if record_ref is not None:
            ref = parse_ref(record_ref)
            if not ref.is_record:
                raise InvalidInputError(f"--record {record_ref!r} is not a record: use activity:ID, offer:ID or delivery:ID")
            store.get_record(session, ref)
            query = query.where(_linked_to(ref.kind, ref.id))
        if organisation_id is not None:
            store.get_organisation(session, organisation_id)
            query = query.where(_linked_to("organisation", organisation_id))
        rows = [_as_json(c) for c in session.scalars(query)]

    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no correspondence filed")
    for row in rows:
        targets = ", ".join(f"{link['ref']} ({link['matched_by']})" for link in row["links"])
        click.echo(f"{row['id']:>5}  {row['date'] or '-':25}  {row['direction']:8}  {row['from'] or '-'}")
        click.echo(f"       {row['subject']}")
        click.echo(f"       -> {targets}")


def _linked_to(kind: str, target_id: int) -> Any:
    return Correspondence.links.any(
        (CorrespondenceLink.target_kind == kind) & (CorrespondenceLink.target_id == target_id)
    )


def _as_json(correspondence: Correspondence) -> dict[str, Any]:
    return {
        "id": correspondence.id,
        "message_id": correspondence.message_id,
        "subject": correspondence.subject,
        "from": correspondence.sender,
        "to": [address["email"] for address in correspondence.to_addresses],
        "cc": [address["email"] for address in correspondence.cc_addresses],
        "date": correspondence.sent_at.isoformat() if correspondence.sent_at else None,
        "direction": correspondence.direction,
        "links": [
            {"ref": f"{link.target_kind}:{link.target_id}", "matched_by": link.matched_by}
            for link in correspondence.links
        ],
        "sources": [
            {"mailbox": source.mailbox, "folder": source.folder_name, "item": source.item_id}
            for source in correspondence.sources
        ],
    }


COMMANDS = [correspondence_group]
