"""`syncd correspondence`: what has been filed, and where."""

from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from crmstore import crm as store
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Correspondence, CorrespondenceLink
from crmstore.refs import parse_ref
from syncd import retention
from syncd.cli.context import App, pass_app, print_json


@click.group("correspondence")
def correspondence_group() -> None:
    """Show filed correspondence, and purge old correspondence."""


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
        names = _link_names(session, rows) if not as_json else {}

    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no correspondence filed")
    for row in rows:
        targets = ", ".join(
            f"{link['ref']} {names.get(link['ref'], '')} ({link['matched_by']})" for link in row["links"]
        )
        click.echo(f"{row['id']:>5}  {row['date'] or '-':25}  {row['direction']:8}  {row['from'] or '-'}")
        click.echo(f"       {row['subject']}")
        click.echo(f"       -> {targets}")


@correspondence_group.command("purge")
@click.option("--before", "before", metavar="DATE", required=True,
              help="Delete mail sent or filed before this day (YYYY-MM-DD, in local_timezone).")
@click.option("--include-unmatched", is_flag=True,
              help="Also delete unmatched-queue entries created before DATE, whatever their state.")
@click.option("--dry-run", is_flag=True, help="Print the counts and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def purge(app: App, before: str, include_unmatched: bool, dry_run: bool, as_json: bool) -> None:
    """Delete correspondence sent or filed before DATE, with its links, in one transaction.

    The processed-item ledger keeps its entries, so no purged mail is filed again.
    """
    zone = ZoneInfo(app.settings.local_timezone)
    cutoff = _start_of_day(before, zone, allow_future=dry_run)
    with app.sessions() as session:
        counts = retention.purge_before(session, cutoff, include_unmatched=include_unmatched)
        if dry_run:
            session.rollback()
        else:
            session.commit()

    if as_json:
        print_json({"before": before, "dry_run": dry_run, **counts.as_dict()})
        return
    if dry_run:
        click.echo("dry run: nothing was changed; a purge would delete")
    click.echo(f"correspondence sent or filed before {before}: {counts.correspondence}")
    click.echo(f"links: {counts.links}")
    click.echo(f"ledger entries kept without their mail: {counts.sources_cleared}")
    if include_unmatched:
        click.echo(f"unmatched entries created before {before}: {counts.unmatched}")


def _start_of_day(value: str, zone: ZoneInfo, *, allow_future: bool = False) -> datetime:
    """Return midnight at the start of the ISO date `value` in `zone`.

    A day after today is rejected unless `allow_future` is set, because a
    dry run only counts and may show what a later purge would delete.
    """
    # date.fromisoformat also takes forms such as 20240101 and 2024-W01-1;
    # the option promises YYYY-MM-DD only.
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"invalid --before {value!r}: use YYYY-MM-DD") from None
    if not allow_future and day > datetime.now(zone).date():
        raise InvalidInputError(
            f"invalid --before {value!r}: the day is after today; give today or an earlier day"
        )
    return datetime.combine(day, time.min, tzinfo=zone)


def _linked_to(kind: str, target_id: int) -> Any:
    return Correspondence.links.any(
        (CorrespondenceLink.target_kind == kind) & (CorrespondenceLink.target_id == target_id)
    )


def _link_names(session: Session, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Return the quoted title or name of every entity the rows link to, by REF."""
    names: dict[str, str] = {}
    for row in rows:
        for link in row["links"]:
            if link["ref"] not in names:
                try:
                    names[link["ref"]] = repr(store.entity_name(session, parse_ref(link["ref"])))
                except NotFoundError:
                    # The entity was deleted after the mail was filed.
                    names[link["ref"]] = "(deleted)"
    return names


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
