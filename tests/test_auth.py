"""MsalTokenProvider with real msal against a loopback HTTPS token endpoint, and OAuth 2.0 EWS end to end."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import exchangelib
import pytest
import trustme
import urllib3.util.connection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from factories import self_signed
from fakes.ews_server import FakeEwsServer
from fakes.token_server import FakeTokenServer, TokenFault, TokenRequest

from syncd.auth import (
    EWS_SCOPE,
    GRAPH_SCOPE,
    ClientCertificate,
    MsalTokenProvider,
    token_provider_for,
)
from syncd.backends.ews import EwsBackend, make_credentials
from syncd.errors import (
    BackendAuthError,
    ConfigError,
    PermanentBackendError,
    TransientBackendError,
)

TENANT_ID = "5d0c8a3e-7f41-4b2a-9c6e-1f2a3b4c5d6e"
CLIENT_ID = "a7e3f9c1-2b4d-4e6f-8a0b-c1d2e3f4a5b6"
CLIENT_SECRET = "hemmelig~Klientnøkkel.æøå-42"
MAILBOX = "kari.nordmann@example.test"


@pytest.fixture
def token_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT_ID) as server:
        server.add_client(CLIENT_ID, secret=CLIENT_SECRET)
        # requests, and so msal, reads the CA bundle from the environment.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_bundle))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        yield server


ProviderFactory = Callable[..., MsalTokenProvider]


@pytest.fixture
def make_provider(token_server: FakeTokenServer) -> ProviderFactory:
    def factory(**overrides: Any) -> MsalTokenProvider:
        settings: dict[str, Any] = {
            "tenant_id": TENANT_ID,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": EWS_SCOPE,
            "authority_host": token_server.authority_host,
            "timeout": 5,
        }
        settings.update(overrides)
        return MsalTokenProvider(**settings)

    return factory


@pytest.fixture
def provider(make_provider: ProviderFactory) -> MsalTokenProvider:
    return make_provider()


# -- tokens and the cache ---------------------------------------------------------


def test_provider_first_call_requests_token(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    result = provider()

    assert token_server.is_valid(result["access_token"])
    assert result["expires_in"] == 3599
    assert token_server.token_requests == [
        TokenRequest(
            "POST", f"/{TENANT_ID}/oauth2/v2.0/token", "client_credentials", CLIENT_ID, EWS_SCOPE, "secret"
        )
    ]


def test_provider_second_call_uses_cache(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    first = provider()

    second = provider()

    assert second["access_token"] == first["access_token"]
    assert second["token_source"] == "cache"
    assert len(token_server.token_requests) == 1


def test_invalidated_token_replaced(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    first = provider()["access_token"]

    provider.invalidate(first)
    second = provider()["access_token"]

    assert second != first
    assert len(token_server.token_requests) == 2


def test_provider_loads_configuration_once(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    provider()
    provider()

    discovery = [r for r in token_server.requests if r.method == "GET"]
    assert discovery == [TokenRequest("GET", f"/{TENANT_ID}/v2.0/.well-known/openid-configuration")]


def test_provider_contacts_only_authority(
    token_server: FakeTokenServer, provider: MsalTokenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msal's instance discovery would send a request about 127.0.0.1 to login.microsoftonline.com.
    hosts: list[str] = []
    real_create_connection = urllib3.util.connection.create_connection

    def recording_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        hosts.append(address[0])
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording_create_connection)

    provider()

    assert set(hosts) == {"127.0.0.1"}


def test_provider_renews_short_lived_token(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    # msal 1.39 treats a token that expires within 5 minutes as expired.
    token_server.expires_in = 299
    first = provider()

    second = provider()

    assert second["access_token"] != first["access_token"]
    assert len(token_server.token_requests) == 2


def test_provider_asks_for_its_scope(token_server: FakeTokenServer, make_provider: ProviderFactory) -> None:
    make_provider(scope=GRAPH_SCOPE)()

    assert [r.scope for r in token_server.token_requests] == [GRAPH_SCOPE]


class StubApplication:
    """Returns a fixed result from acquire_token_for_client and records the requested scopes."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.scopes: list[list[str]] = []

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        self.scopes.append(scopes)
        return self.result


def test_provider_passes_scope_to_application() -> None:
    application = StubApplication({"access_token": "abc", "token_type": "Bearer", "expires_in": 3599})
    provider = MsalTokenProvider(
        tenant_id=TENANT_ID, client_id=CLIENT_ID, scope=EWS_SCOPE, application=application
    )

    provider()

    assert application.scopes == [[EWS_SCOPE]]


# -- rejected credentials -------------------------------------------------------------


def test_wrong_secret_raises_auth_error(make_provider: ProviderFactory) -> None:
    provider = make_provider(client_secret="feil-hemmelighet-æøå")

    with pytest.raises(BackendAuthError) as caught:
        provider()

    assert TENANT_ID in str(caught.value)
    assert CLIENT_ID in str(caught.value)
    assert "invalid_client" in str(caught.value)
    assert "feil-hemmelighet-æøå" not in str(caught.value)


def test_invalid_client_fault_hides_secret(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    token_server.fail_next(TokenFault.INVALID_CLIENT)

    with pytest.raises(BackendAuthError) as caught:
        provider()

    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in repr(caught.value.__cause__)


def test_unknown_client_raises_auth_error(make_provider: ProviderFactory) -> None:
    provider = make_provider(client_id="ukjent-app")

    with pytest.raises(BackendAuthError, match="unauthorized_client"):
        provider()


def test_unknown_tenant_raises_auth_error(make_provider: ProviderFactory) -> None:
    provider = make_provider(tenant_id="ukjent-leietaker.onmicrosoft.com")

    with pytest.raises(BackendAuthError, match="ukjent-leietaker.onmicrosoft.com"):
        provider()


def test_temporarily_unavailable_raises_transient() -> None:
    application = StubApplication({"error": "temporarily_unavailable", "error_description": "AADSTS50196"})
    provider = MsalTokenProvider(
        tenant_id=TENANT_ID, client_id=CLIENT_ID, scope=EWS_SCOPE, application=application
    )

    with pytest.raises(TransientBackendError, match="temporarily_unavailable"):
        provider()


# -- unreachable authority ----------------------------------------------------------------


def test_server_error_raises_transient(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    token_server.fail_next(TokenFault.SERVER_ERROR)

    with pytest.raises(TransientBackendError) as caught:
        provider()

    assert TENANT_ID in str(caught.value)
    assert CLIENT_ID in str(caught.value)


def test_dropped_connection_raises_transient(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    token_server.fail_next(TokenFault.DROP)

    with pytest.raises(TransientBackendError):
        provider()


def test_refused_discovery_raises_transient(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    token_server.refuse_connections()

    with pytest.raises(TransientBackendError, match=CLIENT_ID):
        provider()


def test_provider_recovers_after_refused_discovery(
    token_server: FakeTokenServer, provider: MsalTokenProvider
) -> None:
    token_server.refuse_connections()
    with pytest.raises(TransientBackendError):
        provider()
    token_server.accept_connections()

    result = provider()

    assert token_server.is_valid(result["access_token"])


def test_refused_token_request_raises_transient(token_server: FakeTokenServer, provider: MsalTokenProvider) -> None:
    # A lifetime below msal's 5-minute margin makes the second call go to the endpoint.
    token_server.expires_in = 120
    provider()
    token_server.refuse_connections()

    with pytest.raises(TransientBackendError, match=TENANT_ID):
        provider()


def test_untrusted_certificate_raises_permanent(
    provider: MsalTokenProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A CA that did not issue the server's certificate.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))

    with pytest.raises(PermanentBackendError, match="TLS") as caught:
        provider()

    assert not isinstance(caught.value, BackendAuthError)


# -- secrets stay out of logs and reprs ------------------------------------------------------


def test_secret_never_logged(
    token_server: FakeTokenServer, make_provider: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("", "msal", "urllib3", "requests", "syncd"):
        caplog.set_level(logging.DEBUG, logger=name)
    provider = make_provider()
    token = provider()["access_token"]
    provider()
    token_server.expires_in = 120
    make_provider(scope=GRAPH_SCOPE)()
    token_server.fail_next(TokenFault.SERVER_ERROR)
    with pytest.raises(TransientBackendError):
        make_provider(scope="https://example.test/.default")()
    with pytest.raises(BackendAuthError):
        make_provider(client_secret=CLIENT_SECRET + "-feil")()

    logger_names = {record.name.split(".")[0] for record in caplog.records}
    assert {"msal", "urllib3", "syncd"} <= logger_names
    assert CLIENT_SECRET not in caplog.text
    assert token not in caplog.text


def test_provider_repr_hides_secret(provider: MsalTokenProvider) -> None:
    text = repr(provider)

    assert CLIENT_SECRET not in text
    assert CLIENT_ID in text


# -- settings ---------------------------------------------------------------------------------


def test_provider_rejects_two_credentials(certificate: ClientCertificate) -> None:
    with pytest.raises(ConfigError, match="both"):
        MsalTokenProvider(
            tenant_id=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            certificate=certificate, scope=EWS_SCOPE,
        )


def test_provider_needs_credential() -> None:
    with pytest.raises(ConfigError, match="no credential"):
        MsalTokenProvider(tenant_id=TENANT_ID, client_id=CLIENT_ID, scope=EWS_SCOPE)


def test_provider_rejects_http_authority() -> None:
    with pytest.raises(ConfigError, match="https"):
        MsalTokenProvider(
            tenant_id=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            scope=EWS_SCOPE, authority_host="http://127.0.0.1:8080",
        )


def test_provider_construction_stays_offline(token_server: FakeTokenServer, make_provider: ProviderFactory) -> None:
    make_provider()

    assert token_server.requests == []


# -- sharing providers ---------------------------------------------------------------------------


def test_token_provider_for_shares_provider(token_server: FakeTokenServer) -> None:
    first = token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, EWS_SCOPE, authority_host=token_server.authority_host)

    second = token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, EWS_SCOPE, authority_host=token_server.authority_host)

    assert second is first


def test_token_provider_for_separates_scopes(token_server: FakeTokenServer) -> None:
    ews = token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, EWS_SCOPE, authority_host=token_server.authority_host)

    graph = token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, GRAPH_SCOPE, authority_host=token_server.authority_host)

    assert graph is not ews
    assert graph.scope == GRAPH_SCOPE


def test_token_provider_for_separates_secrets(token_server: FakeTokenServer) -> None:
    old = token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, EWS_SCOPE, authority_host=token_server.authority_host)

    rotated = token_provider_for(TENANT_ID, CLIENT_ID, "ny-hemmelighet", EWS_SCOPE, authority_host=token_server.authority_host)

    assert rotated is not old


def test_shared_provider_requests_one_token(token_server: FakeTokenServer) -> None:
    for _ in range(3):
        token_provider_for(TENANT_ID, CLIENT_ID, CLIENT_SECRET, EWS_SCOPE, authority_host=token_server.authority_host)()

    assert len(token_server.token_requests) == 1


# -- certificates -------------------------------------------------------------------------------


CERTIFICATE_CLIENT_ID = "c4b2a0e8-6d4f-4a2c-9e8b-7f6a5b4c3d2e"


def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def app_certificate(rsa_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return self_signed(rsa_key)


@pytest.fixture
def certificate_files(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, app_certificate: x509.Certificate) -> tuple[Path, Path]:
    key_path = tmp_path / "syncd.key"
    certificate_path = tmp_path / "syncd.crt"
    key_path.write_text(key_pem(rsa_key))
    certificate_path.write_bytes(app_certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


@pytest.fixture
def certificate(certificate_files: tuple[Path, Path]) -> ClientCertificate:
    return ClientCertificate.from_files(*certificate_files)


def test_certificate_provider_gets_token(
    token_server: FakeTokenServer,
    make_provider: ProviderFactory,
    certificate: ClientCertificate,
    app_certificate: x509.Certificate,
) -> None:
    token_server.add_client(
        CERTIFICATE_CLIENT_ID, certificate_pem=app_certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    provider = make_provider(client_id=CERTIFICATE_CLIENT_ID, client_secret=None, certificate=certificate)

    result = provider()

    assert token_server.is_valid(result["access_token"])
    assert [r.credential for r in token_server.token_requests] == ["assertion"]


def test_certificate_of_other_app_raises_auth_error(
    token_server: FakeTokenServer, make_provider: ProviderFactory, certificate: ClientCertificate
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_server.add_client(
        CERTIFICATE_CLIENT_ID,
        certificate_pem=self_signed(other_key).public_bytes(serialization.Encoding.PEM).decode(),
    )
    provider = make_provider(client_id=CERTIFICATE_CLIENT_ID, client_secret=None, certificate=certificate)

    with pytest.raises(BackendAuthError, match=CERTIFICATE_CLIENT_ID):
        provider()


def test_certificate_thumbprint_from_file(certificate: ClientCertificate, app_certificate: x509.Certificate) -> None:
    assert certificate.thumbprint == app_certificate.fingerprint(hashes.SHA1()).hex().upper()


def test_certificate_accepts_one_combined_file(
    tmp_path: Path, certificate_files: tuple[Path, Path], certificate: ClientCertificate
) -> None:
    combined = tmp_path / "syncd.pem"
    combined.write_text(certificate_files[0].read_text() + certificate_files[1].read_text())

    assert ClientCertificate.from_files(combined, combined) == certificate


def test_certificate_thumbprint_normalised(rsa_key: rsa.RSAPrivateKey) -> None:
    spaced = "ab:cd " + "12" * 18

    certificate = ClientCertificate(private_key=key_pem(rsa_key), thumbprint=spaced)

    assert certificate.thumbprint == "ABCD" + "12" * 18


def test_certificate_rejects_bad_thumbprint(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="'not-a-thumbprint'"):
        ClientCertificate(private_key=key_pem(rsa_key), thumbprint="not-a-thumbprint")


def test_certificate_rejects_unreadable_key() -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ClientCertificate(private_key="-----BEGIN PRIVATE KEY-----\nøæå\n", thumbprint="AB" * 20)


def test_certificate_rejects_ec_key() -> None:
    with pytest.raises(ConfigError, match="RSA"):
        ClientCertificate(private_key=key_pem(ec.generate_private_key(ec.SECP256R1())), thumbprint="AB" * 20)


def test_certificate_rejects_mismatched_key(tmp_path: Path, certificate_files: tuple[Path, Path]) -> None:
    other_key = tmp_path / "annen.key"
    other_key.write_text(key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))

    with pytest.raises(ConfigError, match="does not belong"):
        ClientCertificate.from_files(other_key, certificate_files[1])


def test_certificate_missing_file_names_path(tmp_path: Path, certificate_files: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="mangler.key"):
        ClientCertificate.from_files(tmp_path / "mangler.key", certificate_files[1])


def test_certificate_repr_hides_key(certificate: ClientCertificate) -> None:
    assert "PRIVATE KEY" not in repr(certificate)


# -- EWS with OAuth 2.0 end to end -----------------------------------------------------------------


def norwegian_mail(subject: str = "Tilbud på møteromsstoler – Tromsø") -> bytes:
    message = EmailMessage()
    message["From"] = "Åse Ødegård <ase.odegard@example.test>"
    message["To"] = f"Kari Nordmann <{MAILBOX}>"
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="example.test")
    message.set_content("Hei Kari!\n\nVedlagt er tilbudet vi snakket om.\n\nHilsen Åse\n")
    return message.as_bytes()


@pytest.fixture
def ews_server(token_server: FakeTokenServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEwsServer]:
    # requests-oauthlib sends tokens only over https unless this is set; the fake EWS is plain http.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with FakeEwsServer() as server:
        server.add_mailbox(MAILBOX)
        server.require_bearer(token_server.is_valid)
        yield server
    exchangelib.close_connections()


@pytest.fixture
def oauth_backend(token_server: FakeTokenServer, ews_server: FakeEwsServer) -> Iterator[EwsBackend]:
    credentials = make_credentials(
        "oauth2",
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority_host=token_server.authority_host,
    )
    backend = EwsBackend(MAILBOX, endpoint=ews_server.url, credentials=credentials, folder_names=["CRM-arkiv"], timeout=5)
    yield backend
    backend.close()


def bearer_tokens(server: FakeEwsServer) -> list[str]:
    return [authorization.removeprefix("Bearer ") for authorization in server.authorizations]


def test_fake_ews_rejects_unknown_bearer(ews_server: FakeEwsServer) -> None:
    def forged_provider() -> dict[str, Any]:
        return {"access_token": "forfalsket-token", "token_type": "Bearer", "expires_in": 3599}

    credentials = make_credentials("oauth2", token_provider=forged_provider)
    backend = EwsBackend(MAILBOX, endpoint=ews_server.url, credentials=credentials, folder_names=["CRM-arkiv"], timeout=5)

    try:
        with pytest.raises(BackendAuthError):
            backend.ensure_folders()
    finally:
        backend.close()


def test_oauth_backend_syncs_mail(
    token_server: FakeTokenServer, ews_server: FakeEwsServer, oauth_backend: EwsBackend
) -> None:
    [report] = oauth_backend.ensure_folders()
    raw = norwegian_mail()
    item_id = ews_server.drop(MAILBOX, "CRM-arkiv", raw)

    items = [item for batch in oauth_backend.batches(report.folder, None) for item in batch.items]

    assert [(item.item_id, item.raw) for item in items] == [(item_id, raw)]
    assert all(token in token_server.issued_tokens for token in bearer_tokens(ews_server))
    assert len(token_server.token_requests) == 1


def test_oauth_backend_renews_expired_token(
    token_server: FakeTokenServer, ews_server: FakeEwsServer, oauth_backend: EwsBackend
) -> None:
    # With 32 s, the credentials treat the token as expired after 2 s (their
    # margin is 30 s) and msal does not serve it from its cache (margin 5 min).
    token_server.expires_in = 32
    [report] = oauth_backend.ensure_folders()
    [first_token] = set(bearer_tokens(ews_server))
    time.sleep(2.1)
    token_server.revoke(first_token)
    ews_server.clear_requests()
    item_id = ews_server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Purring: faktura 2024-117 – Bodø"))

    items = [item for batch in oauth_backend.batches(report.folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]
    assert len(token_server.token_requests) == 2
    assert first_token not in bearer_tokens(ews_server)
    assert all(token_server.is_valid(token) for token in bearer_tokens(ews_server))


def test_oauth_mailboxes_share_provider(token_server: FakeTokenServer) -> None:
    settings = {
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authority_host": token_server.authority_host,
    }

    first = make_credentials("oauth2", **settings)
    second = make_credentials("oauth2", **settings)

    assert first.token_provider is second.token_provider
