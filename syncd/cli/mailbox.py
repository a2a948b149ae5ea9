"""`syncd mailbox`: enrol mailboxes and manage their enrolment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import crm
from crmstore.crm import normalise_email
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Mailbox
from crmstore.refs import parse_ref
from syncd import folders
from syncd.backends import BACKEND_KINDS, open_backend
from syncd.backends.dropdir import POST_ACTIONS
from syncd.cli.context import App, pass_app, print_json
from syncd.secrets import validate_name

EWS_AUTH = ("ntlm", "basic", "oauth2")

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group("mailbox")
def mailbox_group() -> None:
    """Enrol, list, disable, enable and remove mailboxes."""


@mailbox_group.command("enroll")
@click.argument("address")
@click.option("--backend", type=click.Choice(BACKEND_KINDS), required=True, help="How syncd reaches the mailbox.")
@click.option("--path", type=click.Path(path_type=Path), help="Drop directory (backend folder).")
@click.option("--endpoint", help="EWS URL, e.g. https://mail.example.com/EWS/Exchange.asmx; default: autodiscover.")
@click.option("--auth", type=click.Choice(EWS_AUTH), help="EWS authentication (backend ews).")
@click.option("--username", help="Service account for ntlm or basic, e.g. DOMAIN\\svc-syncd.")
@click.option("--tenant", "tenant_id", help="Entra ID tenant ID (backend graph, or ews with auth oauth2).")
@click.option("--client-id", help="Application (client) ID of the Entra ID app (graph, or ews with oauth2).")
@click.option(
    "--secret",
    "secret_name",
    help="Name of the secret holding the password or client secret; default: ews-password, "
    "or entra-client-secret for oauth2. See the README on secrets.",
)
@click.option(
    "--client-certificate",
    "certificate_name",
    metavar="NAME",
    help="Name of the credential that contains the PEM private key and certificate of the Entra ID app, "
    "used in place of a client secret (graph, or ews with oauth2). See the README on secrets.",
)
@click.option("--access", type=click.Choice(["impersonation", "delegate"]), default="impersonation",
              show_default=True, help="impersonation: ApplicationImpersonation role; delegate: full access.")
@click.option(
    "--post-action",
    type=click.Choice(POST_ACTIONS),
    help="What happens to a mail once it is recorded: keep it, move it to the processed folder, "
    "or delete it (to Deleted Items). Default: move for folder, keep for ews and graph.",
)
@click.option("--role", type=click.Choice(["sync", "inbound"]), default="sync", show_default=True,
              help="sync: a user's own mailbox; inbound: a shared mailbox users forward mails to.")
@pass_app
def enroll(
    app: App,
    address: str,
    backend: str,
    path: Path | None,
    endpoint: str | None,
    auth: str | None,
    username: str | None,
    tenant_id: str | None,
    client_id: str | None,
    secret_name: str | None,
    certificate_name: str | None,
    access: str,
    post_action: str | None,
    role: str,
) -> None:
    """Enrol the mailbox ADDRESS so that passes sync it."""
    address = normalise_email(address)
    if certificate_name is not None and not (backend == "graph" or (backend == "ews" and auth == "oauth2")):
        raise click.UsageError("--client-certificate needs --backend graph, or --backend ews with --auth oauth2")
    if backend == "folder":
        config = _folder_config(path, post_action or "move")
    elif backend == "graph":
        config = _graph_config(tenant_id, client_id, secret_name, certificate_name)
        config["post_action"] = post_action or "keep"
    else:
        config = _ews_config(
            app, address, endpoint, auth, username, tenant_id, client_id, secret_name, certificate_name, access
        )
        config["post_action"] = post_action or "keep"

    with app.transaction() as session:
        if session.scalar(select(Mailbox).where(Mailbox.address == address)) is not None:
            raise InvalidInputError(f"mailbox {address!r} is already enrolled: see `syncd mailbox list`")
        session.add(Mailbox(address=address, backend=backend, role=role, config=config))
    where = config.get("path") or config.get("endpoint") or f"tenant {config.get('tenant_id')}"
    click.echo(f"enrolled {address} ({backend}, {role}) at {where}")


def _folder_config(path: Path | None, post_action: str) -> dict[str, str]:
    if path is None:
        raise click.UsageError("--backend folder needs --path DIR")
    directory = path.expanduser().resolve()
    if not directory.is_dir():
        raise InvalidInputError(f"drop directory {str(path)!r} does not exist: create it first")
    return {"path": str(directory), "post_action": post_action}


def _graph_config(
    tenant_id: str | None, client_id: str | None, secret_name: str | None, certificate_name: str | None
) -> dict[str, str]:
    if not (tenant_id and client_id):
        raise click.UsageError("--backend graph needs --tenant and --client-id")
    return {"tenant_id": tenant_id, "client_id": client_id, **_entra_credential_config(secret_name, certificate_name)}


def _entra_credential_config(secret_name: str | None, certificate_name: str | None) -> dict[str, str]:
    """Return the config entry that names the Entra ID app's credential: a certificate or a client secret."""
    if certificate_name is not None and secret_name is not None:
        raise click.UsageError("give either --secret or --client-certificate, not both")
    if certificate_name is not None:
        return {"certificate": validate_name(certificate_name)}
    return {"secret": validate_name(secret_name or "entra-client-secret")}


def _ews_config(
    app: App,
    address: str,
    endpoint: str | None,
    auth: str | None,
    username: str | None,
    tenant_id: str | None,
    client_id: str | None,
    secret_name: str | None,
    certificate_name: str | None,
    access: str,
) -> dict[str, str]:
    if auth is None:
        raise click.UsageError("--backend ews needs --auth ntlm, basic or oauth2")
    if auth in ("ntlm", "basic") and not username:
        raise click.UsageError(f"--auth {auth} needs --username")
    if auth == "oauth2" and not (tenant_id and client_id):
        raise click.UsageError("--auth oauth2 needs --tenant and --client-id")
    if auth == "oauth2":
        credential = _entra_credential_config(secret_name, certificate_name)
    else:
        credential = {"secret": validate_name(secret_name or "ews-password")}
    config = {
        "auth": auth,
        "access": access,
        **credential,
        "username": username or "",
        "tenant_id": tenant_id or "",
        "client_id": client_id or "",
    }
    if endpoint is None:
        from syncd.backends import ews_credentials
        from syncd.backends.ews_discover import discover_endpoint

        credentials = ews_credentials({**config, "endpoint": "autodiscover"}, app.settings.entra.authority_host)
        endpoint = discover_endpoint(address, credentials, access)
    if not endpoint.startswith(("https://", "http://")):
        raise InvalidInputError(f"invalid --endpoint {endpoint!r}: give the full https:// URL of EWS")
    config["endpoint"] = endpoint
    return config


@mailbox_group.command("migrate")
@click.argument("address")
@click.option("--to", "target", type=click.Choice(["graph"]), required=True, help="The backend to move to.")
@click.option("--tenant", "tenant_id", required=True, help="Entra ID tenant ID.")
@click.option("--client-id", required=True, help="Application (client) ID of the Entra ID app.")
@click.option("--secret", "secret_name", help="Name of the secret holding the client secret; default: entra-client-secret.")
@click.option(
    "--client-certificate",
    "certificate_name",
    metavar="NAME",
    help="Name of the credential that contains the app's PEM private key and certificate, in place of a client secret.",
)
@pass_app
def migrate(
    app: App,
    address: str,
    target: str,
    tenant_id: str,
    client_id: str,
    secret_name: str | None,
    certificate_name: str | None,
) -> None:
    """Move the Exchange Online mailbox ADDRESS from EWS to Microsoft Graph.

    The sync folders and everything filed stay. The EWS cursors mean nothing
    to Graph, so the first Graph pass reads the sync folders from the start;
    mail filed before is recognised by its Message-ID and not filed again.
    """
    with app.transaction() as session:
        mailbox = _get(session, address)
        if mailbox.backend != "ews":
            raise InvalidInputError(
                f"mailbox {mailbox.address!r} uses backend {mailbox.backend!r}: only ews mailboxes move to graph"
            )
        config = _graph_config(tenant_id, client_id, secret_name, certificate_name)
        config["post_action"] = mailbox.config.get("post_action", "keep")
        mailbox.backend = target
        mailbox.config = config
        # Mapped folders keep their record; the next pass finds them by name.
        mailbox.folders[:] = [row for row in mailbox.folders if row.is_mapped]
    click.echo(f"migrated {mailbox.address} from ews to {target}; the next pass re-reads its sync folders")


@mailbox_group.command("check")
@click.argument("address")
@pass_app
def check(app: App, address: str) -> None:
    """Connect to ADDRESS, create its sync folders if missing, and report."""
    with app.sessions() as session:
        mailbox = _get(session, address)
        backend = open_backend(mailbox, app.settings)
    try:
        reports = backend.ensure_folders()
    finally:
        backend.close()
    click.echo(f"{mailbox.address}: connected ({mailbox.backend}, {mailbox.role})")
    for report in reports:
        click.echo(f"  {'created' if report.created else 'found'} folder {report.folder.name!r}")


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
        config: dict[str, Any] = row["config"]  # type: ignore[assignment]
        where = config.get("path") or config.get("endpoint") or config.get("tenant_id") or ""
        click.echo(f"{row['address']}  {row['backend']}  {row['role']}  {row['state']}  {where}")


@mailbox_group.command("map-folder")
@click.argument("address")
@click.argument("folder_name", metavar="FOLDER")
@click.argument("ref")
@pass_app
def map_folder(app: App, address: str, folder_name: str, ref: str) -> None:
    """Make FOLDER below the sync folder of ADDRESS and file all mail dropped there against REF.

    REF is a record such as offer:3. The folder is found, or created when
    missing, through the mailbox's backend. A tracking code in the new text
    of a mail still files it against the code's record as well.
    """
    name = _checked_folder_name(app, folder_name)
    target = parse_ref(ref)
    with app.sessions() as session:
        mailbox = _get(session, address)
        if not target.is_record:
            raise InvalidInputError(f"{ref!r} is not a record: a folder maps to activity:ID, offer:ID or delivery:ID")
        crm.get_record(session, target)
        backend = open_backend(mailbox, app.settings)
    try:
        roots = [report.folder for report in backend.ensure_folders()]
        report = backend.ensure_subfolder(roots[0], name)
    finally:
        backend.close()

    with app.transaction() as session:
        folders.save_sync_folders(session, mailbox.address, backend.kind, roots)
        changed = folders.map_folder(session, mailbox.address, backend.kind, report.folder, target)
    if not changed:
        click.echo(f"folder {name!r} of {mailbox.address} is already mapped to {target}")
        return
    found = "created" if report.created else "found"
    click.echo(f"{found} folder {name!r} below {roots[0].name!r} of {mailbox.address}; its mail is filed against {target}")


@mailbox_group.command("unmap-folder")
@click.argument("address")
@click.argument("folder_name", metavar="FOLDER")
@pass_app
def unmap_folder(app: App, address: str, folder_name: str) -> None:
    """Stop filing the mail in FOLDER of ADDRESS against its record; the folder stays.

    syncd no longer reads the folder, so mail dropped there afterwards is
    not filed; move it to the sync folder instead.
    """
    with app.transaction() as session:
        row = folders.unmap_folder(session, address, folder_name)
        mapped = f"{row.record_kind}:{row.record_id}"
        name = row.name
    click.echo(f"unmapped folder {name!r} of {address.lower()} from {mapped}, and the folder stays in the mailbox")


@mailbox_group.command("folders")
@click.argument("address")
@json_option
@pass_app
def list_folders(app: App, address: str, as_json: bool) -> None:
    """List the folders syncd scans in ADDRESS, and the record each mapped folder files against."""
    with app.sessions() as session:
        mailbox = _get(session, address)
        rows = [
            {
                "name": row.name,
                "backend": row.backend,
                "record": f"{row.record_kind}:{row.record_id}" if row.is_mapped else None,
            }
            for row in sorted(mailbox.folders, key=lambda row: (row.is_mapped, row.id))
        ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no folders found yet in {mailbox.address}: run `syncd mailbox check {mailbox.address}`")
    for row in rows:
        click.echo(f"{row['name']}  -> {row['record']}" if row["record"] else f"{row['name']}  (sync folder)")


def _checked_folder_name(app: App, name: str) -> str:
    name = name.strip()
    if not name or len(name) > 255:
        raise InvalidInputError(f"invalid folder name {name!r}: give 1 to 255 characters")
    if "/" in name or "\\" in name:
        raise InvalidInputError(f"invalid folder name {name!r}: a mapped folder name has no / or \\")
    processed = app.settings.name("processed_folder")
    if name.casefold() == processed.casefold():
        raise InvalidInputError(
            f"invalid folder name {name!r}: syncd moves handled mail to {processed!r}, so choose another name"
        )
    return name


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
