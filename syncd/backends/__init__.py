"""Mailbox backends, and the factory that opens the right one for an enrolled mailbox."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import tls
from syncd.errors import ConfigError
from syncd.secrets import read_secret

if TYPE_CHECKING:
    from crmstore.models import Mailbox
    from syncd.auth import ClientCertificate
    from syncd.backends.base import MailboxBackend
    from syncd.settings import Settings

BACKEND_KINDS = ("folder", "ews", "graph")

# One credentials object per service account for the life of the process.
# exchangelib keys its connection pool on the credentials object, so the
# mailboxes of one account share one pool, and its size caps the account's
# concurrent requests.
_credentials: dict[tuple[str, ...], Any] = {}
_credentials_lock = threading.Lock()


def open_backend(mailbox: Mailbox, settings: Settings) -> MailboxBackend:
    """Build the backend for an enrolled mailbox from its stored config and the settings."""
    if mailbox.backend == "folder":
        from syncd.backends.dropdir import DropDirectoryBackend

        return DropDirectoryBackend(
            Path(mailbox.config["path"]),
            post_action=mailbox.config.get("post_action", "move"),
            batch_size=settings.sync.batch_size,
            max_item_bytes=settings.limits.max_message_bytes,
        )
    if mailbox.backend in ("ews", "graph"):
        tls.warn_if_unverified(tls.verify_from(settings.tls), f"mailbox {mailbox.address}")
    if mailbox.backend == "ews":
        return _open_ews(mailbox, settings)
    if mailbox.backend == "graph":
        return _open_graph(mailbox, settings)
    raise ConfigError(
        f"mailbox {mailbox.address!r} uses backend {mailbox.backend!r}, which this syncd "
        f"does not support: use one of {', '.join(BACKEND_KINDS)}"
    )


def categories(settings: Settings) -> dict[str, str]:
    """Return the Outlook category for each outcome, from the settings' names."""
    filed = settings.name("category_filed")
    not_filed = settings.name("category_not_filed")
    return {"filed": filed, "duplicate": filed, "unmatched": not_filed, "failed": not_filed}


def _open_ews(mailbox: Mailbox, settings: Settings) -> MailboxBackend:
    from syncd.backends.ews import EwsBackend

    config = mailbox.config
    verify = tls.verify_from(settings.tls)
    return EwsBackend(
        mailbox.address,
        endpoint=config["endpoint"],
        credentials=ews_credentials(config, settings.entra.authority_host, verify=verify),
        access=config.get("access", "impersonation"),
        folder_names=[settings.name("sync_folder")],
        inbound=mailbox.role == "inbound",
        categories=categories(settings),
        post_action=config.get("post_action", "keep"),
        processed_folder_name=settings.name("processed_folder"),
        batch_size=settings.sync.batch_size,
        timeout=settings.ews.timeout_seconds,
        max_connections=settings.ews.max_connections_per_account,
        verify=verify,
    )


def _open_graph(mailbox: Mailbox, settings: Settings) -> MailboxBackend:
    from syncd.auth import GRAPH_SCOPE, token_provider_for
    from syncd.backends.graph import GraphBackend

    config = mailbox.config
    verify = tls.verify_from(settings.tls)
    provider = token_provider_for(
        config["tenant_id"], config["client_id"], entra_credential(config), GRAPH_SCOPE,
        authority_host=settings.entra.authority_host, verify=verify,
    )
    return GraphBackend(
        mailbox.address,
        token_provider=provider,
        base_url=settings.graph.base_url,
        folder_names=[settings.name("sync_folder")],
        inbound=mailbox.role == "inbound",
        categories=categories(settings),
        post_action=config.get("post_action", "keep"),
        processed_folder_name=settings.name("processed_folder"),
        batch_size=settings.sync.batch_size,
        timeout=settings.graph.timeout_seconds,
        max_concurrency=settings.graph.max_concurrency,
        verify=verify,
    )


def ews_credentials(config: dict[str, Any], authority_host: str, *, verify: tls.Verify = True) -> Any:
    """Return the shared credentials object for the service account in an EWS enrolment.

    `verify` is the TLS check of the Entra ID authority for "oauth2".
    """
    from syncd.auth import EWS_SCOPE, token_provider_for
    from syncd.backends.ews import make_credentials

    auth = config["auth"]
    key = (auth, config["endpoint"], config.get("username") or "", config.get("tenant_id") or "",
           config.get("client_id") or "", config.get("secret") or "", config.get("certificate") or "", repr(verify))
    with _credentials_lock:
        if key not in _credentials:
            if auth == "oauth2" and config.get("certificate"):
                provider = token_provider_for(
                    config["tenant_id"], config["client_id"], entra_credential(config), EWS_SCOPE,
                    authority_host=authority_host, verify=verify,
                )
                _credentials[key] = make_credentials(auth, tenant_id=config["tenant_id"], token_provider=provider)
            elif auth == "oauth2":
                _credentials[key] = make_credentials(
                    auth, tenant_id=config["tenant_id"], client_id=config["client_id"],
                    client_secret=read_secret(config["secret"]), authority_host=authority_host, verify=verify,
                )
            else:
                secret = read_secret(config["secret"])
                _credentials[key] = make_credentials(auth, username=config["username"], password=secret)
        return _credentials[key]


def entra_credential(config: dict[str, Any]) -> str | ClientCertificate:
    """Read the Entra ID app credential that an enrolment names: a certificate, else a client secret.

    The config stores only the credential's name. A certificate credential
    is one PEM text with the unencrypted private key and its certificate.
    """
    from syncd.auth import ClientCertificate

    name = config.get("certificate")
    if name:
        return ClientCertificate.from_pem(read_secret(name), f"credential {name!r}")
    return read_secret(config["secret"])


def forget_credentials() -> None:
    """Drop the shared credentials objects, so that the next backend builds new ones."""
    with _credentials_lock:
        _credentials.clear()
