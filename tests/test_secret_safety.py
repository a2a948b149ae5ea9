"""No secret in logs, errors, CLI output or the database, after authenticated syncs through the real CLI.

Each run enrols a mailbox, syncs the sample mails, and then makes the
server reject syncd, so that error paths are logged and stored too. The
search covers every log record down to DEBUG (those of exchangelib,
requests-oauthlib, urllib3 and msal included), every CLI output and every
row of every table. It looks for the password, the client secret, the HTTP
Basic header, each NTLM AUTHENTICATE_MESSAGE and each access token that the
token server issued.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import exchangelib
import pytest
from click.testing import CliRunner, Result
from fakes.ews_server import FakeEwsServer, Fault
from fakes.graph_server import FakeGraphServer
from fakes.tls import TlsCertificateAuthority
from fakes.token_server import FakeTokenServer
from sqlalchemy import MetaData, create_engine, select

import syncd.backends
from crmstore import db
from syncd import logsetup
from syncd.cli.main import cli

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

INGRID = "ingrid.berg@salg.example"
SERVICE_ACCOUNT = "svc-crm@salg.example"
SERVICE_PASSWORD = "Sv4rt-hemmelig-æøå-7Q"
NTLM_ACCOUNT = "SALG\\svc-crm"
TENANT = "9e4b2c71-3d8a-4f6e-b1c2-7a5d9e0f3b48"
CLIENT = "1f7c3e9a-5b2d-4a8e-9c6f-3d0b8e2a7c51"
CLIENT_SECRET = "klient-hemmelighet-æøå-Zx9"

#: Loggers captured at DEBUG, beyond syncd's own.
LIBRARY_LOGGERS = ("exchangelib", "requests_oauthlib", "oauthlib", "urllib3", "msal", "requests")


class Syncd:
    """The real CLI in-process, with every output kept for the search."""

    def __init__(self, store_url: str, config: Path) -> None:
        self.env = {
            "SYNCD_DATABASE_URL": store_url,
            "SYNCD_CONFIG": str(config),
            "SYNCD_SECRET_EWS_PASSWORD": SERVICE_PASSWORD,
            "SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET,
        }
        self.outputs: list[str] = []
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, catch_exceptions=True)
        self.outputs.extend([result.stdout, result.stderr, repr(result.exception)])
        assert result.exit_code == code, result.output
        return result


@pytest.fixture(autouse=True)
def _debug_everywhere(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # The CLI raises the chatty libraries to WARNING; here they stay at DEBUG,
    # so that the search covers what they would log at any level.
    monkeypatch.setattr(logsetup, "CHATTY_LIBRARIES", ())
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    caplog.set_level(logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


@pytest.fixture
def token_server() -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as server:
        server.add_client(CLIENT, secret=CLIENT_SECRET)
        yield server


def _settings(tmp_path: Path, text: str = "") -> Path:
    config = tmp_path / "settings.toml"
    config.write_text('log_level = "DEBUG"\n[sync]\nmax_attempts = 2\nmax_backoff_seconds = 1\n[ews]\ntimeout_seconds = 5\n' + text)
    config.chmod(0o600)
    return config


def _drop_samples(server: FakeEwsServer | FakeGraphServer, folder: str = "CRM-arkiv") -> None:
    for path in sorted((SAMPLES / "mail").glob("*.eml")):
        server.drop(INGRID, folder, path.read_bytes())


def _stored_values(store_url: str) -> list[str]:
    """Every value of every table in the store, bytes as Latin-1 and as UTF-16 text."""
    engine = create_engine(store_url)
    metadata = MetaData()
    metadata.reflect(engine)
    values: list[str] = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        values.append(bytes(value).decode("latin-1"))
                        values.append(bytes(value).decode("utf-16-le", "replace"))
                    else:
                        values.append(str(value))
    engine.dispose()
    return values


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    messages = [record.getMessage() for record in caplog.records]
    return caplog.text + "\n".join(messages)


def _assert_nowhere(secrets: dict[str, str], places: dict[str, str]) -> None:
    for secret_name, secret in secrets.items():
        for place_name, text in places.items():
            assert secret not in text, f"{secret_name} found in {place_name}"


def _places(run: Syncd, caplog: pytest.LogCaptureFixture, store_url: str) -> dict[str, str]:
    return {
        "log records": _log_text(caplog),
        "CLI output": "\n".join(run.outputs),
        "database": "\n".join(_stored_values(store_url)),
    }


def _logged_by(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {record.name.split(".")[0] for record in caplog.records}


def test_ews_basic_leaves_no_secret(store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Syncd(store_url, _settings(tmp_path))
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        run("crm", "load", str(SAMPLES / "crm.json"))
        run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "basic",
            "--username", SERVICE_ACCOUNT)
        run("mailbox", "check", INGRID)
        _drop_samples(server)
        run("sync", "--once")
        server.fail_next("*", Fault.HTTP_401)
        run("sync", "--once", code=1)
        run("status")
        authorizations = list(server.authorizations)

    basic = authorizations[0].removeprefix("Basic ")
    # NOTE: requests encodes a str password as Latin-1 for HTTP Basic, not UTF-8.
    assert base64.b64decode(basic).decode("latin-1") == f"{SERVICE_ACCOUNT}:{SERVICE_PASSWORD}"
    assert {"exchangelib", "urllib3", "syncd"} <= _logged_by(caplog)
    _assert_nowhere(
        {"password": SERVICE_PASSWORD, "Basic header": basic},
        _places(run, caplog, store_url),
    )


def test_ews_oauth_leaves_no_secret(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, token_server: FakeTokenServer
) -> None:
    authority = TlsCertificateAuthority(tmp_path)
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(authority.bundle.read_bytes() + token_server.ca_bundle.read_bytes())
    run = Syncd(store_url, _settings(
        tmp_path, f'[entra]\nauthority_host = "{token_server.authority_host}"\n[tls]\nca_bundle = "{bundle}"\n'
    ))
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        server.require_bearer(token_server.is_valid)
        assert server._http is not None
        authority.serve(server._http)
        url = server.url.replace("http://", "https://")

        run("crm", "load", str(SAMPLES / "crm.json"))
        run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", url, "--auth", "oauth2",
            "--tenant", TENANT, "--client-id", CLIENT)
        run("mailbox", "check", INGRID)
        _drop_samples(server)
        run("sync", "--once")
        for token in list(token_server.issued_tokens):
            token_server.revoke(token)
        # The backend retries a revoked token once with a new one. Exchange
        # rejects that one too, so the pass also ends with an auth error.
        server.require_bearer(lambda _token: False)
        run("sync", "--once", code=1)
        run("status")

    tokens = {f"token {number}": token for number, token in enumerate(token_server.issued_tokens)}
    assert tokens
    assert {"exchangelib", "requests_oauthlib", "msal", "urllib3", "syncd"} <= _logged_by(caplog)
    _assert_nowhere({"client secret": CLIENT_SECRET, **tokens}, _places(run, caplog, store_url))


def test_graph_leaves_no_secret(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, token_server: FakeTokenServer
) -> None:
    with FakeGraphServer(token_checker=token_server.is_valid) as graph:
        graph.add_mailbox(INGRID)
        run = Syncd(store_url, _settings(tmp_path, (
            f'[graph]\nbase_url = "{graph.base_url}"\ntimeout_seconds = 5\n'
            f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
            f'[tls]\nca_bundle = "{token_server.ca_bundle}"\n'
        )))
        run("crm", "load", str(SAMPLES / "crm.json"))
        run("mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)
        run("mailbox", "check", INGRID)
        _drop_samples(graph)
        run("sync", "--once")
        run.env["SYNCD_SECRET_ENTRA_CLIENT_SECRET"] = CLIENT_SECRET + "-feil"
        run("sync", "--once", code=1)
        run("status")
        authorizations = list(graph.authorizations)

    tokens = {f"token {number}": token for number, token in enumerate(token_server.issued_tokens)}
    assert tokens
    assert any(authorization.startswith("Bearer ") for authorization in authorizations)
    assert {"msal", "urllib3", "syncd"} <= _logged_by(caplog)
    _assert_nowhere(
        {"client secret": CLIENT_SECRET, **tokens},
        _places(run, caplog, store_url),
    )


def test_ews_ntlm_leaves_no_secret(store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Syncd(store_url, _settings(tmp_path))
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        server.require_ntlm(NTLM_ACCOUNT, SERVICE_PASSWORD)
        run("crm", "load", str(SAMPLES / "crm.json"))
        run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "ntlm",
            "--username", NTLM_ACCOUNT)
        run("mailbox", "check", INGRID)
        _drop_samples(server)
        run("sync", "--once")
        # The password changes on the domain controller, so the next handshake fails.
        server.require_ntlm(NTLM_ACCOUNT, SERVICE_PASSWORD + "-ny")
        run("sync", "--once", code=1)
        run("status")
        authorizations = list(server.authorizations)
        logons = list(server.ntlm_logons)

    # The AUTHENTICATE_MESSAGE (type 3) carries the NTLMv2 response, which an attacker can crack offline.
    authenticate = {
        f"NTLM authenticate {number}": value.removeprefix("NTLM ")
        for number, value in enumerate(a for a in authorizations if a.startswith("NTLM TlRMTVNTUAADAAAA"))
    }
    assert logons
    assert set(logons) == {NTLM_ACCOUNT}
    assert len(authenticate) > len(logons)
    assert {"exchangelib", "urllib3", "syncd"} <= _logged_by(caplog)
    _assert_nowhere({"password": SERVICE_PASSWORD, **authenticate}, _places(run, caplog, store_url))


# -- database URLs ---------------------------------------------------------------------------------

DATABASE_PASSWORD = "topphemmelig-Db7"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://syncd:{DATABASE_PASSWORD}@127.0.0.1:1/crm",
        f"postgresql+psycopg://syncd@127.0.0.1:1/crm?password={DATABASE_PASSWORD}",
    ],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["status"], ["run"], ["correspondence", "purge", "--before", "2020-01-01"]])
def test_unreachable_database_hides_password(
    url: str, command: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Syncd(url, _settings(tmp_path))

    result = run(*command, code=1)

    assert result.stderr.startswith("Error: database error: ")
    _assert_nowhere({"database password": DATABASE_PASSWORD}, {"CLI output": "\n".join(run.outputs),
                                                                 "log records": _log_text(caplog)})


def test_unparsable_database_url_hides_password(tmp_path: Path) -> None:
    run = Syncd(f"postgresql+psycopg//syncd:{DATABASE_PASSWORD}@db.example/crm", _settings(tmp_path))

    result = run("status", code=1)

    assert result.stderr.startswith("Error: invalid setting database_url = 'postgresql+psycopg//syncd:***@db.example/crm'")
    assert "not an SQLAlchemy URL" in result.stderr
    assert DATABASE_PASSWORD not in result.output


def test_db_upgrade_masks_password(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    postgres_url = request.getfixturevalue("postgres_database")
    # The test server trusts local connections, so any password is accepted.
    url = postgres_url.replace("://postgres@", f"://postgres:{DATABASE_PASSWORD}@")
    run = Syncd(url, _settings(tmp_path))

    result = run("db", "upgrade")

    assert f"database {db.masked_url(url)} is up to date" in result.stdout
    assert DATABASE_PASSWORD not in result.output


def test_masked_url_hides_query_password() -> None:
    masked = db.masked_url(f"postgresql+psycopg://syncd@db.example/crm?sslmode=require&password={DATABASE_PASSWORD}")

    assert masked == "postgresql+psycopg://syncd@db.example/crm?password=***&sslmode=require"
