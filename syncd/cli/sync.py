"""`syncd sync`, `syncd run` and `syncd import`: the main job."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

from crmstore import crm as store
from crmstore.errors import NotFoundError
from crmstore.models import CrmUser, Mailbox
from syncd import daemon
from syncd.backends import open_backend
from syncd.cli.context import App, pass_app, print_json, warn
from syncd.errors import SyncdError
from syncd.importer import import_paths
from syncd.lease import Leases
from syncd.pipeline import Pipeline
from syncd.sync import Counts, MailboxSync

json_option = click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")


@click.command("sync")
@click.option("--once", is_flag=True, required=True, help="Run one pass and exit (required).")
@click.option("--mailbox", "address", help="Sync only this mailbox.")
@json_option
@pass_app
def sync_once(app: App, once: bool, address: str | None, as_json: bool) -> None:
    """Run one pass over every enabled mailbox, or over one."""
    with app.sessions() as session:
        query = select(Mailbox).order_by(Mailbox.address)
        if address:
            query = query.where(Mailbox.address == address.lower())
        else:
            query = query.where(Mailbox.enabled.is_(True))
        mailboxes = list(session.scalars(query))
    if address and not mailboxes:
        raise NotFoundError(f"mailbox {address!r} is not enrolled: see `syncd mailbox list`")

    syncer = MailboxSync(app.sessions, Pipeline.from_settings(app.sessions, app.settings), app.settings.sync)
    # A running daemon may hold a mailbox's lease; its pass is left alone.
    leases = Leases(app.sessions, app.settings.sync.lease_seconds, single_node=False, balance=False)
    total = Counts()
    failures = []
    for mailbox in mailboxes:
        claim = leases.acquire(mailbox.address)
        if not claim.held:
            until = f" until {claim.expires_at:%H:%M:%S} UTC" if claim.expires_at else ""
            busy = f"mailbox {mailbox.address} is being synced by node {claim.owner}{until}"
            if address:
                # Named on the command line: not syncing it is a failure.
                failures.append(f"{busy}; try again after that, or stop that node")
            else:
                warn(f"{busy}; skipped")
            continue
        backend = open_backend(mailbox, app.settings)
        try:
            total.merge(syncer.sync(mailbox.address, backend, fence=leases.renew))
        except SyncdError as exc:
            failures.append(f"mailbox {mailbox.address}: {exc}")
        finally:
            backend.close()
            leases.release([mailbox.address])

    _print_counts(total, as_json)
    for failure in failures:
        warn(f"Error: {failure}")
    if failures:
        raise SystemExit(1)


@click.command("run")
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon: sync every enabled mailbox on a schedule until stopped."""
    app: App = ctx.obj
    raise SystemExit(daemon.run(app.config_path))


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--by", "by", metavar="USER_ADDRESS", help="CRM user the files came from.")
@json_option
@pass_app
def import_files(app: App, paths: tuple[Path, ...], by: str | None, as_json: bool) -> None:
    """File the .eml, .msg and .mbox files in PATHS (directories are searched)."""
    if by is not None:
        by = store.normalise_email(by)
        with app.sessions() as session:
            if session.scalar(select(CrmUser).where(CrmUser.email == by)) is None:
                raise NotFoundError(f"CRM user {by!r} does not exist: add it with `syncd crm add-user`")

    counts, problems = import_paths(Pipeline.from_settings(app.sessions, app.settings), list(paths), by)
    _print_counts(counts, as_json)
    for problem in problems:
        warn(f"Error: {problem.path}: {problem.reason}")
    if problems:
        raise SystemExit(1)


def _print_counts(counts: Counts, as_json: bool) -> None:
    if as_json:
        print_json(counts.as_dict())
        return
    click.echo(
        f"seen {counts.seen}, filed {counts.filed}, unmatched {counts.unmatched}, "
        f"failed {counts.failed}, duplicates {counts.duplicates}"
    )


COMMANDS = [sync_once, run, import_files]
