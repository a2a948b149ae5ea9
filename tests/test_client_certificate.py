"""Certificate authentication of the Entra ID app through the real CLI, against the fake token, Graph and EWS servers.

The enrolment names a credential that contains the app's PEM private key and
certificate. The fake token server accepts only client assertions signed by
that key whose header carries the certificate's thumbprint. Every test runs
on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import exchangelib
import jwt
import pytest
import requests
from cli_runner import SyncdCli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from factories import self_signed
from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.token_server import JWT_BEARER_ASSERTION, FakeTokenServer

import syncd.backends

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))

INGRID = "ingrid.berg@salg.example"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "3d6a1f0e-8c2b-4e7d-9a5f-1b0c2d3e4f56"
CREDENTIAL = "entra-app-cert"
CREDENTIAL_VARIABLE = "SYNCD_SECRET_ENTRA_APP_CERT"
SYNC_FOLDER = "CRM-arkiv"


def _key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def app_certificate(app_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return self_signed(app_key)


@pytest.fixture
def credential_pem(app_key: rsa.RSAPrivateKey, app_certificate: x509.Certificate) -> str:
    """The credential as an admin stores it: the private key followed by the certificate."""
    return _key_pem(app_key) + _certificate_pem(app_certificate)


@pytest.fixture
def token_server(monkeypatch: pytest.MonkeyPatch, app_certificate: x509.Certificate) -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as server:
        server.add_client(CLIENT, certificate_pem=_certificate_pem(app_certificate))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_bundle))
        yield server


@pytest.fixture
def graph(token_server: FakeTokenServer) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(token_checker=token_server.is_valid) as server:
        server.add_mailbox(INGRID)
        yield server


class Syncd(SyncdCli):
    def __init__(self, store_url: str, tmp_path: Path, settings: str, credential: str | None) -> None:
        config = tmp_path / "settings.toml"
        config.write_text("[sync]\nmax_attempts = 2\nmax_backoff_seconds = 1\n[ews]\ntimeout_seconds = 5\n" + settings)
        env = {"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": str(config)}
        if credential is not None:
            env[CREDENTIAL_VARIABLE] = credential
        super().__init__(env)


def _make_run(
    store_url: str, tmp_path: Path, token_server: FakeTokenServer, graph: FakeGraphServer, credential: str | None
) -> Syncd:
    settings = (
        f'[graph]\nbase_url = "{graph.base_url}"\ntimeout_seconds = 5\n'
        f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
    )
    syncd_cli = Syncd(store_url, tmp_path, settings, credential)
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    return syncd_cli


@pytest.fixture
def run(
    store_url: str, tmp_path: Path, token_server: FakeTokenServer, graph: FakeGraphServer, credential_pem: str
) -> Iterator[Syncd]:
    yield _make_run(store_url, tmp_path, token_server, graph, credential_pem)
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


def _enroll_graph(run: Syncd) -> None:
    run(
        "mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT,
        "--client-certificate", CREDENTIAL,
    )


def test_graph_certificate_files_samples(run: Syncd, graph: FakeGraphServer, token_server: FakeTokenServer) -> None:
    _enroll_graph(run)
    run("mailbox", "check", INGRID)
    for path in sorted((SAMPLES / "mail").glob("*.eml")):
        graph.drop(INGRID, SYNC_FOLDER, path.read_bytes())

    counts = run.json("sync", "--once")

    outcomes = [entry["outcome"] for entry in EXPECTED.values()]
    assert counts["filed"] == outcomes.count("filed")
    assert counts["unmatched"] == outcomes.count("unmatched")
    assert counts["duplicates"] == outcomes.count("duplicate")
    assert [request.credential for request in token_server.token_requests] == ["assertion"]


def test_enrolment_stores_certificate_name_only(run: Syncd, credential_pem: str) -> None:
    _enroll_graph(run)

    [mailbox] = run.json("mailbox", "list")

    assert mailbox["config"]["certificate"] == CREDENTIAL
    assert "secret" not in mailbox["config"]
    assert "PRIVATE KEY" not in json.dumps(mailbox)


def test_ews_oauth2_certificate_syncs(
    run: Syncd, token_server: FakeTokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake EWS server speaks plain HTTP, over which oauthlib refuses to send a token by default.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with FakeEwsServer() as ews:
        ews.add_mailbox(INGRID)
        ews.require_bearer(token_server.is_valid)
        run(
            "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", ews.url, "--auth", "oauth2",
            "--tenant", TENANT, "--client-id", CLIENT, "--client-certificate", CREDENTIAL,
        )
        run("mailbox", "check", INGRID)
        sample = sorted((SAMPLES / "mail").glob("*.eml"))[0]
        ews.drop(INGRID, SYNC_FOLDER, sample.read_bytes())

        counts = run.json("sync", "--once")

    assert counts["seen"] == 1
    assert counts["failed"] == 0
    assert {request.credential for request in token_server.token_requests} == {"assertion"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret", "entra-client-secret"], "give either --secret or --client-certificate, not both"),
        (["--auth", "basic", "--username", "svc-crm"], "--client-certificate needs --backend graph"),
    ],
)
def test_enroll_rejects_certificate_misuse(run: Syncd, args: list[str], message: str) -> None:
    backend = "ews" if "--auth" in args else "graph"
    result = run(
        "mailbox", "enroll", INGRID, "--backend", backend, "--endpoint", "https://127.0.0.1:1/EWS/Exchange.asmx",
        "--tenant", TENANT, "--client-id", CLIENT, "--client-certificate", CREDENTIAL, *args, code=2,
    )

    assert message in result.stderr


def _bad_credentials(app_key: rsa.RSAPrivateKey, app_certificate: x509.Certificate) -> dict[str, tuple[str | None, str]]:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    thumbprint = app_certificate.fingerprint(hashes.SHA1()).hex().upper()
    return {
        "missing": (
            None,
            f"Error: secret '{CREDENTIAL}' not found: set {CREDENTIAL_VARIABLE}, or pass it with "
            f"LoadCredential={CREDENTIAL}:PATH in the service unit, or put it in /etc/syncd/credentials/{CREDENTIAL}",
        ),
        "not PEM": (
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
            f"Error: credential '{CREDENTIAL}' contains no PEM private key; "
            "give the file with -----BEGIN PRIVATE KEY-----.",
        ),
        "key without certificate": (
            _key_pem(app_key),
            f"Error: credential '{CREDENTIAL}' contains no valid PEM certificate (",
        ),
        "key of another certificate": (
            _key_pem(other_key) + _certificate_pem(app_certificate),
            f"Error: the private key in credential '{CREDENTIAL}' does not belong to its certificate "
            f"(thumbprint {thumbprint}); give the key that was generated with that certificate.",
        ),
    }


@pytest.mark.parametrize("case", ["missing", "not PEM", "key without certificate", "key of another certificate"])
def test_check_rejects_bad_credential(
    store_url: str,
    tmp_path: Path,
    token_server: FakeTokenServer,
    graph: FakeGraphServer,
    app_key: rsa.RSAPrivateKey,
    app_certificate: x509.Certificate,
    case: str,
) -> None:
    credential, message = _bad_credentials(app_key, app_certificate)[case]
    run = _make_run(store_url, tmp_path, token_server, graph, credential)
    _enroll_graph(run)

    result = run("mailbox", "check", INGRID, code=1)

    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert token_server.token_requests == []


def test_fake_rejects_assertion_with_other_thumbprint(
    token_server: FakeTokenServer, app_key: rsa.RSAPrivateKey, app_certificate: x509.Certificate
) -> None:
    """The fake token server checks the x5t header as well as the signature, as Entra ID does."""
    now = int(time.time())
    claims = {"aud": token_server.token_endpoint, "iss": CLIENT, "sub": CLIENT, "jti": "1", "exp": now + 600}
    right = base64.urlsafe_b64encode(app_certificate.fingerprint(hashes.SHA1())).rstrip(b"=").decode()  # noqa: S303
    wrong = base64.urlsafe_b64encode(bytes(20)).rstrip(b"=").decode()

    statuses = []
    for thumbprint in (right, wrong):
        assertion = jwt.encode(claims, app_key, algorithm="RS256", headers={"x5t": thumbprint})
        response = requests.post(
            token_server.token_endpoint,
            data={
                "grant_type": "client_credentials", "client_id": CLIENT, "scope": "https://graph.microsoft.com/.default",
                "client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": assertion,
            },
            verify=str(token_server.ca_bundle),
            timeout=5,
        )
        statuses.append(response.status_code)

    assert statuses == [200, 401]
