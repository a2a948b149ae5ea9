"""`syncd person`: erasing a contact person's address from the store."""

from __future__ import annotations

import click

from syncd import retention
from syncd.cli.context import App, pass_app, print_json


@click.group("person")
def person_group() -> None:
    """Erase a contact person's data."""


@person_group.command("forget")
@click.argument("address")
@click.option("--dry-run", is_flag=True, help="Print the counts and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def forget(app: App, address: str, dry_run: bool, as_json: bool) -> None:
    """Remove ADDRESS from the person and from stored mail, in one transaction.

    Mail whose only party outside the CRM users is ADDRESS is deleted. Other
    mail keeps its row, without ADDRESS in sender, To, Cc, subject, body
    text and raw copy, and without its links to the person.
    """
    with app.sessions() as session:
        report = retention.forget_address(session, address)
        if dry_run:
            session.rollback()
        else:
            session.commit()

    if as_json:
        print_json({"dry_run": dry_run, **report.as_dict()})
        return
    if dry_run:
        click.echo("dry run: nothing was changed; forgetting the address would change")
    owner = f" ({report.person})" if report.person else " (no person has it)"
    click.echo(f"address: {report.address}{owner}")
    click.echo(f"correspondence deleted: {report.correspondence_deleted}")
    click.echo(f"correspondence cleaned: {report.correspondence_scrubbed}")
    click.echo(f"links to the person removed: {report.links_removed}")
    click.echo(f"raw copies rewritten: {report.raw_rewritten}, dropped: {report.raw_dropped}")
    click.echo(f"unmatched entries deleted: {report.unmatched_deleted}, cleaned: {report.unmatched_scrubbed}")
    click.echo(f"ledger entries kept without their mail: {report.sources_cleared}")
    if report.other_addresses:
        click.echo(
            f"{report.person} keeps {', '.join(report.other_addresses)}: forget each address that should go"
        )


COMMANDS = [person_group]
