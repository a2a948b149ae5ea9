"""Autodiscover of a mailbox's EWS endpoint, run once at enrolment."""

from __future__ import annotations

from typing import Any

from syncd.backends.ews_errors import ews_errors
from syncd.errors import BackendError


def discover_endpoint(address: str, credentials: Any, access: str) -> str:
    """Return the EWS URL that autodiscover finds for `address`.

    The daemon never autodiscovers: the URL found here is stored with the
    enrolment, because autodiscover costs DNS lookups and several requests.
    """
    from exchangelib import Account

    # NOTE: not exercised by the test suite, which has no DNS or HTTPS
    # autodiscover service to run against; enrol with --endpoint there.
    with ews_errors(address, "autodiscover"):
        account = Account(address, credentials=credentials, autodiscover=True, access_type=access)
        endpoint = account.protocol.service_endpoint
    if not endpoint:
        raise BackendError(f"autodiscover found no EWS endpoint for {address!r}: give --endpoint URL", mailbox=address)
    return str(endpoint)
