"""App-only OAuth 2.0 access tokens from Microsoft Entra ID for EWS and Microsoft Graph, through msal.

This is the one module that imports msal, and the one place where msal's
errors become syncd errors. Every message names the tenant and the client
id, never the secret or the private key.

    ConfigError             the provider's settings or certificate are invalid
    BackendAuthError        Entra ID rejected the client, its credential or the
                            grant (invalid_client, unauthorized_client,
                            invalid_grant, ...), or does not know the tenant
    TransientBackendError   the token endpoint is unreachable, timed out, or sent
                            HTTP 5xx, temporarily_unavailable or server_error
    PermanentBackendError   the TLS certificate of the authority is not trusted
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from msal.exceptions import MsalError

from syncd import tls
from syncd.errors import (
    BackendAuthError,
    BackendError,
    ConfigError,
    PermanentBackendError,
    TransientBackendError,
)

log = logging.getLogger("syncd.auth")

#: Scope of EWS in Exchange Online for the client-credentials grant.
EWS_SCOPE = "https://outlook.office365.com/.default"

#: Scope of Microsoft Graph for the client-credentials grant.
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

#: The Entra ID authority host of the global Azure cloud.
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

#: OAuth error codes (RFC 6749 section 5.2) after which a later request may succeed.
TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})

#: Remedies to name when Entra ID rejects a token request, by OAuth error code.
REJECTION_HINTS = {
    "invalid_client": "check the client secret or certificate, which may have expired or been removed from the app",
    "unauthorized_client": "check the client id and that the app is registered or consented in this tenant",
    "invalid_grant": "check that the app's credential is valid and the app is enabled",
    "invalid_scope": "check the scope, because app-only tokens need a scope ending in /.default",
    "invalid_request": "check the tenant id and the client id",
}

#: Maximum length, in characters, of Entra ID's error description quoted in an error.
MAX_DESCRIPTION_CHARS = 300


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate credential of an app registration in Entra ID.

    `private_key` is the PEM text of the certificate's RSA private key.
    `thumbprint` is the certificate's SHA-1 thumbprint as the Entra admin
    center shows it: 40 hexadecimal digits, in which colons and spaces are
    ignored. `passphrase` decrypts an encrypted private key. `from_files`
    reads a key file and a certificate file and computes the thumbprint.
    """

    private_key: str = field(repr=False)
    thumbprint: str
    passphrase: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        thumbprint = "".join(self.thumbprint.split()).replace(":", "").upper()
        if len(thumbprint) != 40 or any(c not in "0123456789ABCDEF" for c in thumbprint):
            raise ConfigError(
                f"certificate thumbprint {self.thumbprint!r} is not a SHA-1 thumbprint; "
                "give the 40 hexadecimal digits that the app registration shows."
            )
        object.__setattr__(self, "thumbprint", thumbprint)
        # Parsing the key now turns a broken key into a ConfigError at start-up
        # rather than an msal error at the first token request.
        _load_private_key(self.private_key, self.passphrase, thumbprint)

    @classmethod
    def from_files(
        cls, private_key_path: Path | str, certificate_path: Path | str, passphrase: str | None = None
    ) -> ClientCertificate:
        """Read a PEM private key and its PEM certificate; the two paths may name the same file."""
        key_text = _private_key_block(_read_pem(private_key_path, "private key"), str(private_key_path))
        certificate_text = _read_pem(certificate_path, "certificate")
        certificate = _load_certificate(certificate_text, str(certificate_path))
        thumbprint = _thumbprint(certificate)
        key = _load_private_key(key_text, passphrase, thumbprint)
        if _public_key_der(key.public_key()) != _public_key_der(certificate.public_key()):
            raise ConfigError(
                f"the private key in {private_key_path} does not belong to the certificate in "
                f"{certificate_path} (thumbprint {thumbprint}); give the key that was generated with it."
            )
        return cls(private_key=key_text, thumbprint=thumbprint, passphrase=passphrase)

    @classmethod
    def from_pem(cls, pem: str, source: str) -> ClientCertificate:
        """Build the credential from one PEM text holding an unencrypted private key and its certificate.

        `source` names where the text came from, e.g. "credential 'entra-cert'",
        in the errors for a text without a key or certificate and for a key
        that does not belong to the certificate.
        """
        key_text = _private_key_block(pem, source)
        certificate = _load_certificate(pem, source)
        thumbprint = _thumbprint(certificate)
        try:
            key = serialization.load_pem_private_key(key_text.encode(), password=None)
        except (TypeError, ValueError) as exc:
            # cryptography's messages describe the problem (encrypted key, bad PEM) without quoting key data.
            raise ConfigError(
                f"the private key in {source} cannot be read ({exc}); give an unencrypted PEM private key."
            ) from exc
        if _public_key_der(key.public_key()) != _public_key_der(certificate.public_key()):
            raise ConfigError(
                f"the private key in {source} does not belong to its certificate (thumbprint {thumbprint}); "
                "give the key that was generated with that certificate."
            )
        return cls(private_key=key_text, thumbprint=thumbprint)

    def as_msal_credential(self) -> dict[str, str]:
        """Return the `client_credential` dict that msal's ConfidentialClientApplication takes."""
        credential = {"private_key": self.private_key, "thumbprint": self.thumbprint}
        if self.passphrase:
            credential["passphrase"] = self.passphrase
        return credential


class MsalTokenProvider:
    """App-only access tokens for one scope, by the client-credentials grant of one app in one tenant.

    Give either `client_secret` or `certificate`. Calling the provider
    returns msal's result dict, with `access_token`, `token_type` and
    `expires_in` in seconds, or raises a syncd error.

    The msal application is built on the first call, because building it
    fetches the tenant's OpenID configuration, and is kept for the process
    lifetime with its token cache. msal 1.39 returns a cached token until
    5 minutes before it expires, then requests a new one. `authority_host`
    is trusted as given, because msal's instance discovery is off. It would
    send a request to login.microsoftonline.com to validate any other host.

    `timeout` is in seconds per HTTP request to the authority. `verify`
    sets the check of the authority's TLS certificate (see `syncd.tls`).
    Tests pass `application`, an object with msal's
    `acquire_token_for_client` method, in place of the msal application.
    """

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificate: ClientCertificate | None = None,
        scope: str,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        timeout: float = 30.0,
        verify: tls.Verify = True,
        application: Any = None,
    ) -> None:
        _check_settings(tenant_id, client_id, client_secret, certificate, scope, authority_host, application)
        if timeout <= 0:
            raise ConfigError(f"token request timeout {timeout!r} must be a positive number of seconds.")
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.scope = scope
        self.authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self._credential: str | dict[str, str] | None = (
            certificate.as_msal_credential() if certificate is not None else client_secret
        )
        self._credential_kind = "client secret" if client_secret else "no credential"
        if certificate is not None:
            self._credential_kind = f"certificate {certificate.thumbprint}"
        self._timeout = timeout
        self._verify = verify
        self._application = application
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        application = self._app()
        try:
            result = application.acquire_token_for_client(scopes=[self.scope])
        except (requests.RequestException, MsalError) as exc:
            raise self._request_failed(exc, "requesting a token") from exc
        except json.JSONDecodeError as exc:
            # msal passes this on when a response below HTTP 500 is not JSON, e.g. a proxy's HTML page.
            raise TransientBackendError(
                f"Token request for {self._who()} failed: the token endpoint returned a response "
                "that is not JSON; try again later."
            ) from exc

        if "access_token" not in result:
            raise self._rejected(result)
        log.debug(
            "Access token for client %s in tenant %s (scope %s) from %s, expires in %s s",
            self.client_id, self.tenant_id, self.scope, result.get("token_source", "msal"), result.get("expires_in"),
        )
        return result

    def invalidate(self, token: str) -> None:
        """Drop `token` from msal's cache, so that the next call requests a new one.

        A server that rejects a token before it expires (revoked consent, a
        changed role assignment) would otherwise get the same token back from
        the cache until 5 minutes before its expiry.
        """
        cache = getattr(self._app(), "token_cache", None)
        if cache is None:
            return
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            if entry.get("secret") == token:
                cache.remove_at(entry)
                log.info("Dropped a rejected access token of client %s in tenant %s", self.client_id, self.tenant_id)

    def __repr__(self) -> str:
        return (
            f"MsalTokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
            f"scope={self.scope!r}, credential={self._credential_kind!r})"
        )

    def _app(self) -> Any:
        with self._lock:
            if self._application is None:
                self._application = self._new_application()
            return self._application

    def _new_application(self) -> msal.ConfidentialClientApplication:
        log.info(
            "Loading the OpenID configuration of tenant %s from %s for client %s",
            self.tenant_id, self.authority, self.client_id,
        )
        try:
            return msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self._credential,
                authority=self.authority,
                instance_discovery=False,
                http_client=_AuthorityHttpClient(self._timeout, self._verify),
            )
        except (requests.RequestException, MsalError) as exc:
            raise self._request_failed(exc, f"loading the OpenID configuration from {self.authority}") from exc
        except ValueError as exc:
            # msal raises ValueError when the authority returns HTTP 4xx, as Entra
            # ID does for an unknown tenant, or returns an invalid configuration.
            # msal 1.39 replaces the error that names the HTTP status with a
            # generic one, so the message quotes the original when there is one.
            original = exc.__context__ if isinstance(exc.__context__, ValueError) else exc
            raise BackendAuthError(
                f"Token request for {self._who()} failed: {self.authority} returned no OpenID configuration "
                f"for the tenant ({self._scrubbed(str(original))}); check the tenant id and the authority host."
            ) from exc

    def _request_failed(self, exc: Exception, step: str) -> BackendError:
        """Return the syncd error for a connection failure, time-out, TLS error or HTTP 5xx."""
        detail = f"{type(exc).__name__}: {self._scrubbed(str(exc))}"
        if isinstance(exc, requests.exceptions.SSLError):
            return PermanentBackendError(
                f"Token request for {self._who()} failed with a TLS error while {step} ({detail}); "
                "check the authority's certificate, and name the CA that issued it in tls.ca_bundle."
            )
        return TransientBackendError(
            f"Token request for {self._who()} failed while {step} ({detail}); try again later."
        )

    def _rejected(self, result: dict[str, Any]) -> BackendError:
        """Return the syncd error for an OAuth error response from the token endpoint."""
        code = str(result.get("error") or "unknown_error")
        description = self._scrubbed(str(result.get("error_description") or "no description"))
        if code in TRANSIENT_OAUTH_ERRORS:
            return TransientBackendError(
                f"Entra ID could not issue a token for {self._who()}: {code} ({description}); try again later."
            )
        hint = REJECTION_HINTS.get(code, "check the app registration and its credential")
        return BackendAuthError(
            f"Entra ID rejected the token request for {self._who()} with {code} ({description}); {hint}."
        )

    def _who(self) -> str:
        return f"client {self.client_id} in tenant {self.tenant_id} (scope {self.scope}, {self._credential_kind})"

    def _scrubbed(self, text: str) -> str:
        """Return `text` on one line, cut to MAX_DESCRIPTION_CHARS, with the client secret masked."""
        # Entra ID's descriptions name no secret, but a proxy or a test server could echo one.
        if isinstance(self._credential, str) and self._credential:
            text = text.replace(self._credential, "***")
        text = " ".join(text.split())
        return text[:MAX_DESCRIPTION_CHARS] + "…" if len(text) > MAX_DESCRIPTION_CHARS else text


class _AuthorityHttpClient(requests.Session):
    """The HTTP client msal uses: requests with a default timeout and syncd's TLS settings.

    msal passes no timeout per request to an HTTP client it is given. Its own
    client retries a failed connection once, and this one keeps that.
    """

    def __init__(self, timeout: float, verify: tls.Verify) -> None:
        super().__init__()
        self.default_timeout = timeout
        tls.mount_adapter(self, verify, max_retries=1)

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


_providers: dict[tuple[str, str, str, str, str, str], MsalTokenProvider] = {}
_providers_lock = threading.Lock()


def token_provider_for(
    tenant_id: str,
    client_id: str,
    credential: str | ClientCertificate,
    scope: str,
    *,
    authority_host: str = DEFAULT_AUTHORITY_HOST,
    verify: tls.Verify = True,
) -> MsalTokenProvider:
    """Return the process's provider for this app, credential, scope and TLS check, creating it on first use.

    `credential` is the client secret or a `ClientCertificate`. Every mailbox
    of a tenant that uses the same app registration shares one provider, so
    one msal application and one token cache serve them all.
    """
    key = (
        authority_host.rstrip("/").lower(),
        tenant_id.lower(),
        client_id.lower(),
        _credential_digest(credential),
        scope,
        repr(verify),
    )
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            if isinstance(credential, ClientCertificate):
                provider = MsalTokenProvider(
                    tenant_id=tenant_id, client_id=client_id, certificate=credential,
                    scope=scope, authority_host=authority_host, verify=verify,
                )
            else:
                provider = MsalTokenProvider(
                    tenant_id=tenant_id, client_id=client_id, client_secret=credential,
                    scope=scope, authority_host=authority_host, verify=verify,
                )
            _providers[key] = provider
        return provider


def _credential_digest(credential: str | ClientCertificate) -> str:
    # A digest keeps a second copy of the secret out of the registry's keys.
    if isinstance(credential, ClientCertificate):
        material = f"certificate\0{credential.thumbprint}\0{credential.private_key}"
    else:
        material = f"secret\0{credential}"
    return hashlib.sha256(material.encode()).hexdigest()


def _check_settings(
    tenant_id: str,
    client_id: str,
    client_secret: str | None,
    certificate: ClientCertificate | None,
    scope: str,
    authority_host: str,
    application: Any,
) -> None:
    for name, value in (("tenant_id", tenant_id), ("client_id", client_id), ("scope", scope)):
        if not value or not value.strip():
            raise ConfigError(f"an Entra ID token provider needs {name}; it is empty.")
    if client_secret and certificate is not None:
        raise ConfigError(
            f"client {client_id} in tenant {tenant_id} has both a client secret and a certificate; give one."
        )
    if not client_secret and certificate is None and application is None:
        raise ConfigError(
            f"client {client_id} in tenant {tenant_id} has no credential; give a client secret or a certificate."
        )
    # msal accepts only https authorities.
    if not authority_host.startswith("https://"):
        raise ConfigError(
            f"authority host {authority_host!r} is not an https:// URL; give e.g. {DEFAULT_AUTHORITY_HOST}."
        )


def _read_pem(path: Path | str, content: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {content} file {path}: {exc}; give a readable PEM file.") from exc


_PRIVATE_KEY_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)


def _private_key_block(text: str, source: str) -> str:
    """Return the private key's PEM block alone, from a text that may also contain certificates."""
    match = _PRIVATE_KEY_BLOCK.search(text)
    if match is None:
        raise ConfigError(f"{source} contains no PEM private key; give the file with -----BEGIN PRIVATE KEY-----.")
    return match.group(0) + "\n"


def _load_certificate(text: str, source: str) -> x509.Certificate:
    """Return the first PEM certificate in `text`."""
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError as exc:
        raise ConfigError(
            f"{source} contains no valid PEM certificate ({exc}); "
            "give the certificate uploaded to the app registration."
        ) from exc


def _thumbprint(certificate: x509.Certificate) -> str:
    # SHA-1 is what Entra ID shows as the thumbprint and what msal puts into x5t.
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def _public_key_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_private_key(pem: str, passphrase: str | None, thumbprint: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(
            pem.encode(), password=passphrase.encode() if passphrase else None
        )
    except (TypeError, ValueError) as exc:
        # cryptography's messages describe the problem (wrong passphrase, bad PEM) without quoting key data.
        raise ConfigError(
            f"the private key of certificate {thumbprint} cannot be read ({exc}); "
            "give the PEM private key and, if it is encrypted, its passphrase."
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"the private key of certificate {thumbprint} is a {type(key).__name__}; "
            "msal signs client assertions with RS256 or PS256, which need an RSA key."
        )
    return key
