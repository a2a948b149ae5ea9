"""TLS certificate checks: on by default, a configurable CA bundle, and a loud switch to turn them off.

Exchange runs as the fake EWS server behind a trustme certificate; Entra ID
is the fake token server, which speaks HTTPS with its own trustme CA.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import exchangelib
import pytest
import trustme
from click.testing import CliRunner, Result
from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.tls import TlsCertificateAuthority
from fakes.token_server import FakeTokenServer

import syncd.backends
from syncd.auth import GRAPH_SCOPE, MsalTokenProvider
from syncd.backends.graph import GraphBackend
from syncd.cli.main import cli
from syncd.daemon import Daemon
from syncd.errors import ConfigError, PermanentBackendError
from syncd.settings import TlsSettings, load_settings
from syncd.tls import verify_from

INGRID = "ingrid.berg@salg.example"
TENANT = "3b1f9d2e-6c4a-4e8b-9f1d-2a7c5e9b0d4f"
CLIENT = "c4e2a9f1-7b3d-4c5e-8a1f-0d9e6b2c7a3e"
CLIENT_SECRET = "tls-hemmelighet-æøå"


@pytest.fixture(autouse=True)
def _no_ca_from_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The checks under test must come from the settings alone.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    yield
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


@pytest.fixture
def token_server() -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as server:
        server.add_client(CLIENT, secret=CLIENT_SECRET)
        yield server


@pytest.fixture
def authority(tmp_path: Path) -> TlsCertificateAuthority:
    return TlsCertificateAuthority(tmp_path)


@pytest.fixture
def ews_url(authority: TlsCertificateAuthority) -> Iterator[str]:
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        assert server._http is not None
        authority.serve(server._http)
        yield server.url.replace("http://", "https://")


class Syncd:
    def __init__(self, store_url: str, tmp_path: Path) -> None:
        self.config = tmp_path / "settings.toml"
        self.config.touch(mode=0o600)
        self.env = {
            "SYNCD_DATABASE_URL": store_url,
            "SYNCD_CONFIG": str(self.config),
            "SYNCD_SECRET_EWS_PASSWORD": "Sv4rt-hemmelig-æøå",
            "SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET,
        }
        self.runner = CliRunner()

    def settings(self, text: str) -> None:
        self.config.write_text("[ews]\ntimeout_seconds = 5\n" + text)

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result


@pytest.fixture
def run(store_url: str, tmp_path: Path) -> Syncd:
    return Syncd(store_url, tmp_path)


def _enroll_ews(run: Syncd, url: str) -> None:
    run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", url, "--auth", "basic",
        "--username", "svc-crm@salg.example")


# -- settings ----------------------------------------------------------------------------------


def test_verify_on_by_default() -> None:
    assert verify_from(TlsSettings()) is True


def test_ca_bundle_becomes_verify(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    assert verify_from(TlsSettings(ca_bundle=str(bundle))) == str(bundle)


def test_missing_ca_bundle_named(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[tls]\nca_bundle = "/nonexistent/ca.pem"\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(str(config))

    assert str(caught.value).startswith("invalid setting tls.ca_bundle = '/nonexistent/ca.pem'")
    assert "CA bundle not found" in str(caught.value)
    assert "SYNCD_TLS__CA_BUNDLE" in str(caught.value)


def test_ca_bundle_with_verify_off_rejected(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "settings.toml"
    config.write_text(f'[tls]\nverify = false\nca_bundle = "{bundle}"\n')

    with pytest.raises(ConfigError, match="a CA bundle is given but tls.verify is false"):
        load_settings(str(config))


# -- Entra ID through msal ------------------------------------------------------------------------


def _provider(token_server: FakeTokenServer, verify: bool | str) -> MsalTokenProvider:
    return MsalTokenProvider(
        tenant_id=TENANT, client_id=CLIENT, client_secret=CLIENT_SECRET, scope=GRAPH_SCOPE,
        authority_host=token_server.authority_host, timeout=5, verify=verify,
    )


def test_provider_without_ca_fails_clearly(token_server: FakeTokenServer) -> None:
    with pytest.raises(PermanentBackendError) as caught:
        _provider(token_server, True)()

    assert "failed with a TLS error while loading the OpenID configuration" in str(caught.value)
    assert "name the CA that issued it in tls.ca_bundle" in str(caught.value)


def test_provider_with_ca_bundle_gets_token(token_server: FakeTokenServer) -> None:
    token = _provider(token_server, str(token_server.ca_bundle))()["access_token"]

    assert token_server.is_valid(token)


def test_ca_bundle_overrides_environment(
    token_server: FakeTokenServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))

    token = _provider(token_server, str(token_server.ca_bundle))()["access_token"]

    assert token_server.is_valid(token)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_provider_without_verify_gets_token(token_server: FakeTokenServer) -> None:
    token = _provider(token_server, False)()["access_token"]

    assert token_server.is_valid(token)


def test_graph_mailbox_needs_ca_bundle(run: Syncd, token_server: FakeTokenServer) -> None:
    with FakeGraphServer(token_checker=token_server.is_valid) as graph:
        graph.add_mailbox(INGRID)
        settings = (
            f'[graph]\nbase_url = "{graph.base_url}"\n'
            f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
        )
        run.settings(settings)
        run("mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)

        refused = run("mailbox", "check", INGRID, code=1)
        run.settings(settings + f'[tls]\nca_bundle = "{token_server.ca_bundle}"\n')
        accepted = run("mailbox", "check", INGRID)

    assert "TLS error" in refused.stderr
    assert "tls.ca_bundle" in refused.stderr
    assert "created folder 'CRM-arkiv'" in accepted.stdout


# -- Microsoft Graph and EWS -------------------------------------------------------------------------


def _graph_backend(token_server: FakeTokenServer, verify: bool | str) -> GraphBackend:
    # The token server takes Graph's place, because only its certificate matters here.
    return GraphBackend(
        INGRID, token_provider=lambda: {"access_token": "t", "expires_in": 3600},
        base_url=f"{token_server.authority_host}/v1.0", folder_names=["CRM-arkiv"], timeout=5, verify=verify,
    )


def test_graph_session_checks_certificate(token_server: FakeTokenServer) -> None:
    backend = _graph_backend(token_server, True)

    with pytest.raises(PermanentBackendError, match="TLS error"):
        backend.ensure_folders()


def test_graph_session_uses_ca_bundle(token_server: FakeTokenServer) -> None:
    backend = _graph_backend(token_server, str(token_server.ca_bundle))

    # Past the handshake, the token server returns 404 for a Graph path.
    with pytest.raises(PermanentBackendError) as caught:
        backend.ensure_folders()

    assert "TLS" not in str(caught.value)


def test_ews_without_ca_fails_clearly(run: Syncd, ews_url: str) -> None:
    run.settings("")
    _enroll_ews(run, ews_url)

    result = run("mailbox", "check", INGRID, code=1)

    assert result.stderr.startswith(f"Error: EWS folder lookup for mailbox {INGRID} failed: TLS error")
    assert "name the CA that issued it in tls.ca_bundle" in result.stderr


def test_ews_with_ca_bundle_connects(run: Syncd, ews_url: str, authority: TlsCertificateAuthority) -> None:
    run.settings(f'[tls]\nca_bundle = "{authority.bundle}"\n')
    _enroll_ews(run, ews_url)

    result = run("mailbox", "check", INGRID)

    assert "created folder 'CRM-arkiv'" in result.stdout


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_ews_without_verify_connects_and_warns(
    run: Syncd, ews_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    run.settings("[tls]\nverify = false\n")
    _enroll_ews(run, ews_url)
    caplog.set_level(logging.WARNING, logger="syncd.tls")

    result = run("mailbox", "check", INGRID)

    assert "created folder 'CRM-arkiv'" in result.stdout
    warnings = [r.getMessage() for r in caplog.records if r.name == "syncd.tls" and r.levelno == logging.WARNING]
    assert warnings == [
        f"TLS certificate checks are off (tls.verify = false) for mailbox {INGRID}: anyone on the network path "
        "can read its passwords, tokens and mail. Set tls.ca_bundle to the server's CA instead."
    ]


def test_ews_verify_follows_settings_change(run: Syncd, ews_url: str, authority: TlsCertificateAuthority) -> None:
    run.settings(f'[tls]\nca_bundle = "{authority.bundle}"\n')
    _enroll_ews(run, ews_url)
    run("mailbox", "check", INGRID)

    run.settings("")
    result = run("mailbox", "check", INGRID, code=1)

    # The same credentials reach the same endpoint, but the cached
    # connection pool must not carry the old CA bundle over.
    assert "TLS error" in result.stderr


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_daemon_start_warns_without_verify(
    run: Syncd, ews_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.settings("[tls]\nverify = false\n")
    _enroll_ews(run, ews_url)
    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="syncd.tls")
    daemon = Daemon(str(run.config), load_settings(str(run.config)))

    try:
        backend = daemon._backend(INGRID)
    finally:
        daemon.engine.dispose()

    assert backend is not None
    backend.close()
    assert [r.name for r in caplog.records if r.levelno == logging.WARNING] == ["syncd.tls"]
