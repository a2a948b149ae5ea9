"""A fake Microsoft Entra ID token endpoint over HTTPS on 127.0.0.1 for tests.

The server serves what msal 1.39 requests for the client-credentials grant of
a confidential client built with `instance_discovery=False`:

    GET  /<tenant>/v2.0/.well-known/openid-configuration    the tenant's endpoints
    POST /<tenant>/oauth2/v2.0/token                         a new access token

A client proves itself with a client secret (in the form body or by HTTP Basic
authentication, RFC 6749 section 2.3.1) or with a client assertion: a JWT
signed by the private key of a registered certificate (RFC 7523), whose header
names that certificate by its thumbprint in x5t (SHA-1) or x5t#S256 (SHA-256),
as Entra ID requires. Every grant
returns a new random access token that is valid for `expires_in` seconds.

The TLS certificate is issued by a trustme CA. Point `REQUESTS_CA_BUNDLE` at
`ca_bundle` so that requests, and so msal, trust it. `is_valid` tells another
fake server whether a Bearer token is one that this server issued and that
has not expired.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import http.server
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

#: client_assertion_type of a JWT client assertion, from RFC 7523 section 2.2.
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: Signature algorithms msal uses for client assertions: RS256 with a SHA-1
#: thumbprint, PS256 with a SHA-256 thumbprint.
ASSERTION_ALGORITHMS = ["RS256", "PS256"]


class TokenFault(enum.StrEnum):
    """A failure that `FakeTokenServer.fail_next` injects into the next token requests."""

    #: HTTP 401 with error invalid_client, as Entra ID sends for a wrong or expired secret.
    INVALID_CLIENT = "invalid_client"
    #: HTTP 400 with error unauthorized_client, as for an app that is not in the tenant.
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    #: HTTP 500 with an HTML body.
    SERVER_ERROR = "server_error"
    #: The connection is closed without a response.
    DROP = "drop"


class TokenRequest(NamedTuple):
    """One request as the server saw it, without client secrets or assertions.

    `credential` is "secret", "assertion" or None; `grant_type`, `client_id`
    and `scope` are None for GET requests.
    """

    method: str
    path: str
    grant_type: str | None = None
    client_id: str | None = None
    scope: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class _Client:
    secret: str | None
    certificate: x509.Certificate | None


class FakeTokenServer:
    """A token endpoint for one tenant, with registered clients, issued tokens and switchable faults.

    Use it as a context manager, or call `start()` and `close()`.
    """

    def __init__(self, tenant_id: str, *, expires_in: int = 3599) -> None:
        self.tenant_id = tenant_id
        #: Lifetime in seconds of the tokens issued from now on.
        self.expires_in = expires_in
        #: Every request in arrival order, without secrets.
        self.requests: list[TokenRequest] = []
        #: Every access token issued, mapped to its expiry as a time.time() value.
        self.issued_tokens: dict[str, float] = {}
        self._clients: dict[str, _Client] = {}
        self._faults: list[TokenFault] = []
        self._lock = threading.Lock()
        self._ca = trustme.CA()
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1").configure_cert(self._tls)
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._http: _TlsHttpServer | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeTokenServer:
        self._directory = tempfile.TemporaryDirectory(prefix="fake-token-server-")
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.accept_connections()
        return self

    def close(self) -> None:
        self.refuse_connections()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> FakeTokenServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def refuse_connections(self) -> None:
        """Close open connections and stop listening, so that connecting fails until `accept_connections()`."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http.close_connections()
            self._http = None

    def accept_connections(self) -> None:
        """Listen again, on the same port as before."""
        if self._http is not None:
            return
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._http = _TlsHttpServer(("127.0.0.1", self._port), handler, self._tls)
        self._port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    @property
    def ca_bundle(self) -> Path:
        """The PEM file of the CA that issued the server's certificate."""
        if self._directory is None:
            raise RuntimeError("the fake token server is not started; call start() first")
        return Path(self._directory.name) / "ca.pem"

    @property
    def authority_host(self) -> str:
        """The base URL to use in place of https://login.microsoftonline.com."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}/oauth2/v2.0/token"

    # -- test API ----------------------------------------------------------------

    def add_client(self, client_id: str, *, secret: str | None = None, certificate_pem: str | None = None) -> None:
        """Register an app that authenticates with `secret`, or with assertions signed for `certificate_pem`."""
        if (secret is None) == (certificate_pem is None):
            raise ValueError("give a client either a secret or a certificate")
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode()) if certificate_pem else None
        with self._lock:
            self._clients[client_id] = _Client(secret, certificate)

    def fail_next(self, fault: TokenFault | str, count: int = 1) -> None:
        """Fail the next `count` token requests with `fault`; discovery requests are not affected."""
        with self._lock:
            self._faults.extend([TokenFault(fault)] * count)

    def is_valid(self, token: str) -> bool:
        """Return whether `token` was issued here and has not expired or been revoked."""
        with self._lock:
            expires_at = self.issued_tokens.get(token)
        return expires_at is not None and time.time() < expires_at

    def revoke(self, token: str) -> None:
        """Make `token` invalid from now on, as an admin revoking the app's sessions would."""
        with self._lock:
            if token in self.issued_tokens:
                self.issued_tokens[token] = 0.0

    @property
    def token_requests(self) -> list[TokenRequest]:
        """The POST requests to the token endpoint."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    # -- request handling ----------------------------------------------------------

    def _openid_configuration(self, handler: _Handler) -> None:
        base = f"{self.authority_host}/{self.tenant_id}"
        handler.send_json(
            200,
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": self.token_endpoint,
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "jwks_uri": f"{self.authority_host}/{self.tenant_id}/discovery/v2.0/keys",
            },
        )

    def _token(self, handler: _Handler, form: dict[str, str]) -> None:
        client_id, secret = _basic_credentials(handler.headers.get("Authorization"))
        client_id = form.get("client_id") or client_id
        secret = form.get("client_secret") or secret
        assertion = form.get("client_assertion")
        credential = None
        if assertion:
            credential = "assertion"
        elif secret:
            credential = "secret"
        with self._lock:
            self.requests.append(
                TokenRequest("POST", handler.path, form.get("grant_type"), client_id, form.get("scope"), credential)
            )
            fault = self._faults.pop(0) if self._faults else None
            client = self._clients.get(client_id or "")

        if fault is not None:
            self._send_fault(handler, fault)
            return
        if form.get("grant_type") != "client_credentials":
            handler.send_oauth_error(400, "unsupported_grant_type", "AADSTS70003: only client_credentials is supported.")
            return
        if client is None:
            handler.send_oauth_error(
                400, "unauthorized_client", f"AADSTS700016: Application with identifier '{client_id}' was not found."
            )
            return
        if not self._authenticated(client, secret, assertion, form.get("client_assertion_type"), client_id or ""):
            handler.send_oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
            return
        if not form.get("scope", "").endswith("/.default"):
            handler.send_oauth_error(400, "invalid_scope", "AADSTS1002012: The scope must end in /.default.")
            return

        token = secrets.token_urlsafe(32)
        with self._lock:
            expires_in = self.expires_in
            self.issued_tokens[token] = time.time() + expires_in
        handler.send_json(200, {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token})

    def _authenticated(
        self, client: _Client, secret: str | None, assertion: str | None, assertion_type: str | None, client_id: str
    ) -> bool:
        if client.secret is not None:
            return secret is not None and secrets.compare_digest(secret.encode(), client.secret.encode())
        if client.certificate is None or not assertion or assertion_type != JWT_BEARER_ASSERTION:
            return False
        try:
            if not _names_certificate(jwt.get_unverified_header(assertion), client.certificate):
                return False
            jwt.decode(
                assertion,
                client.certificate.public_key(),
                algorithms=ASSERTION_ALGORITHMS,
                audience=self.token_endpoint,
                issuer=client_id,
                options={"require": ["exp", "aud", "iss", "sub", "jti"]},
            )
        except jwt.InvalidTokenError:
            return False
        return True

    @staticmethod
    def _send_fault(handler: _Handler, fault: TokenFault) -> None:
        if fault is TokenFault.INVALID_CLIENT:
            handler.send_oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        elif fault is TokenFault.UNAUTHORIZED_CLIENT:
            handler.send_oauth_error(
                400, "unauthorized_client", "AADSTS700016: Application was not found in the directory."
            )
        elif fault is TokenFault.SERVER_ERROR:
            handler.send_body(500, "text/html", b"<html><body>Internal Server Error</body></html>")
        else:
            handler.close_connection = True


def _names_certificate(header: dict[str, Any], certificate: x509.Certificate) -> bool:
    """Return whether the assertion header's thumbprint is that of `certificate`."""
    for claim, algorithm in (("x5t", hashes.SHA1()), ("x5t#S256", hashes.SHA256())):  # noqa: S303
        if claim in header:
            expected = base64.urlsafe_b64encode(certificate.fingerprint(algorithm)).rstrip(b"=").decode()
            return secrets.compare_digest(str(header[claim]).rstrip("="), expected)
    return False


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    """Return the client id and secret of an HTTP Basic Authorization header, or (None, None)."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(authorization[6:]).decode()
    except ValueError:
        return None, None
    client_id, _, secret = decoded.partition(":")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


class _TlsHttpServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does the TLS handshake in each request's own thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], tls: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.tls = tls
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            # A client that distrusts the certificate hangs up during the handshake.
            return
        with self._open_lock:
            self._open.add(wrapped)
        try:
            super().finish_request(wrapped, client_address)
        finally:
            with self._open_lock:
                self._open.discard(wrapped)
            # The plain socket was detached by wrap_socket, so closing it
            # afterwards would not end the TLS connection.
            wrapped.close()

    def close_connections(self) -> None:
        """End the kept-alive connections, which would otherwise outlive the listening socket."""
        with self._open_lock:
            open_sockets = list(self._open)
        for open_socket in open_sockets:
            with contextlib.suppress(OSError):
                open_socket.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop their connection are normal in fault tests; stay quiet.
        return


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    fake: FakeTokenServer

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        path = self.path.split("?", 1)[0]
        with self.fake._lock:
            self.fake.requests.append(TokenRequest("GET", path))
        if path == f"/{self.fake.tenant_id}/v2.0/.well-known/openid-configuration":
            self.fake._openid_configuration(self)
            return
        if path.endswith("/.well-known/openid-configuration"):
            self.send_oauth_error(400, "invalid_tenant", f"AADSTS90002: Tenant in {path!r} not found.")
            return
        self.send_oauth_error(404, "not_found", f"The fake token server has nothing at {path}.")

    def do_POST(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        path = self.path.split("?", 1)[0]
        if path != f"/{self.fake.tenant_id}/oauth2/v2.0/token":
            with self.fake._lock:
                self.fake.requests.append(TokenRequest("POST", path))
            self.send_oauth_error(404, "not_found", f"The fake token server has no token endpoint at {path}.")
            return
        form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        self.fake._token(self, form)

    def send_oauth_error(self, status: int, error: str, description: str) -> None:
        # Entra ID sends these fields with every OAuth error response.
        self.send_json(
            status,
            {
                "error": error,
                "error_description": f"{description} Trace ID: {secrets.token_hex(8)}",
                "error_codes": [int(description[6:description.index(":")])] if description.startswith("AADSTS") else [],
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            },
        )

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_body(status, "application/json; charset=utf-8", json.dumps(payload).encode())

    def send_body(self, status: int, content_type: str, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed by the base class
        # Tests read `FakeTokenServer.requests`; access lines on stderr would only add noise.
        return
