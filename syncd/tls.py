"""TLS certificate checks for syncd's HTTPS clients: exchangelib, Microsoft Graph and msal.

All three send their requests through requests, so one transport adapter
carries the `[tls]` settings to each of them. The adapter replaces the
`verify` value that requests works out per request. A session's own
`verify` attribute is not enough, because requests lets
$REQUESTS_CA_BUNDLE override it.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import requests
from requests.adapters import HTTPAdapter

if TYPE_CHECKING:
    from syncd.settings import TlsSettings

log = logging.getLogger("syncd.tls")

Verify = bool | str
"""requests' `verify`: True for requests' default trust ($REQUESTS_CA_BUNDLE, else certifi's bundle),
False for no certificate check, or the path of a CA bundle."""


def verify_from(settings: TlsSettings) -> Verify:
    """Return the `verify` value that the `[tls]` settings ask for."""
    if not settings.verify:
        return False
    return settings.ca_bundle or True


class PinnedVerifyAdapter(HTTPAdapter):
    """An HTTP adapter that sends every request with the class's `verify`, whatever requests worked out."""

    #: The `verify` value for every request through this adapter.
    verify: ClassVar[Verify] = True

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.verify
        return super().send(request, *args, **kwargs)


@functools.cache
def adapter_class(verify: Verify) -> type[HTTPAdapter]:
    """Return an adapter class that applies `verify`, or requests' own adapter for True.

    This returns a class rather than an instance, because exchangelib builds
    its adapters itself from a class.
    """
    if verify is True:
        return HTTPAdapter
    return type(f"PinnedVerifyAdapter[{verify!r}]", (PinnedVerifyAdapter,), {"verify": verify})


def mount_adapter(session: requests.Session, verify: Verify, *, pool_maxsize: int = 10, max_retries: int = 0) -> None:
    """Send the session's http and https requests through an adapter for `verify`."""
    adapter = adapter_class(verify)(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=max_retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


def warn_if_unverified(verify: Verify, target: str) -> None:
    """Log a warning that `target` is reached without a certificate check, when `verify` is False."""
    if verify is False:
        log.warning(
            "TLS certificate checks are off (tls.verify = false) for %s: anyone on the network path "
            "can read its passwords, tokens and mail. Set tls.ca_bundle to the server's CA instead.",
            target,
        )
