"""HTTPS for the plain-HTTP fake servers: their listening socket wrapped in TLS with a trustme certificate."""

from __future__ import annotations

import http.server
import ssl
from pathlib import Path

import trustme


class TlsCertificateAuthority:
    """A test CA whose PEM file clients can be pointed at, and which issues the certificate for 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.bundle = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.bundle))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(self.context)

    def serve(self, server: http.server.HTTPServer) -> None:
        """Make `server` speak HTTPS from its next connection on.

        The TLS handshake runs when the server accepts a connection; a client
        that rejects the certificate ends it there, and the server goes on.
        """
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
