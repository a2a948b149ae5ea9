"""`syncd status`: the state of every enrolled mailbox."""

from __future__ import annotations

from collections import Counter

import click
from sqlalchemy import func, select

from crmstore.models import Mailbox, ProcessedItem, SyncNode
from syncd.cli.context import App, pass_app, print_json
from syncd.lease import lease_owners


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show per mailbox: backend, role, state, syncing node, last sync, counts and last error."""
    with app.sessions() as session:
        owners = lease_owners(session)
        nodes = session.execute(select(SyncNode.id, SyncNode.seen_at).order_by(SyncNode.id)).all()
        counts: dict[str, Counter[str]] = {}
        for address, outcome, number in session.execute(
            select(ProcessedItem.mailbox, ProcessedItem.outcome, func.count()).group_by(
                ProcessedItem.mailbox, ProcessedItem.outcome
            )
        ):
            counts.setdefault(address, Counter())[outcome] = number
        rows = []
        for mailbox in session.scalars(select(Mailbox).order_by(Mailbox.address)):
            tally = counts.get(mailbox.address, Counter())
            rows.append(
                {
                    "mailbox": mailbox.address,
                    "backend": mailbox.backend,
                    "role": mailbox.role,
                    "state": mailbox.state if mailbox.enabled else "disabled",
                    "node": owners[mailbox.address][0] if mailbox.address in owners else None,
                    "last_sync": mailbox.last_sync_at.isoformat() if mailbox.last_sync_at else None,
                    "last_success": mailbox.last_success_at.isoformat() if mailbox.last_success_at else None,
                    "filed": tally["filed"],
                    # Another copy of a mail already filed: a second source, not a second filing.
                    "duplicates": tally["duplicate"],
                    "unmatched": tally["unmatched"],
                    "failed": tally["failed"],
                    "last_error": mailbox.last_error,
                }
            )
    if as_json:
        print_json(rows)
        return
    leases_per_node = Counter(node for node, _ in owners.values())
    for node, seen_at in nodes:
        click.echo(f"node {node}: leases {leases_per_node[node]}, last heartbeat {seen_at:%Y-%m-%d %H:%M:%S} UTC")
    if not rows:
        click.echo("no mailboxes enrolled")
    for row in rows:
        click.echo(
            f"{row['mailbox']}  {row['backend']}/{row['role']}  {row['state']}  "
            f"last success {row['last_success'] or 'never'}  "
            f"filed {row['filed']}, duplicates {row['duplicates']}, unmatched {row['unmatched']}, failed {row['failed']}"
            + (f"  node {row['node']}" if row["node"] else "")
        )
        if row["last_error"]:
            click.echo(f"    last error: {row['last_error']}")


COMMANDS = [status]
