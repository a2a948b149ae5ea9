"""The main job against the fake Microsoft Graph, with msal getting real tokens on 127.0.0.1.

Also moves an EWS-enrolled mailbox to Graph and checks that nothing is
filed twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from cli_runner import SyncdCli
from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.graph_server import Fault as GraphFault
from fakes.token_server import FakeTokenServer

import syncd.backends

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))

INGRID = "ingrid.berg@salg.example"
LARS = "lars.ovrebo@salg.example"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"
SYNC_FOLDER = "CRM-arkiv"


@pytest.fixture
def token_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as server:
        server.add_client(CLIENT, secret=CLIENT_SECRET)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_bundle))
        yield server


@pytest.fixture
def graph(token_server: FakeTokenServer) -> Iterator[FakeGraphServer]:
    with FakeGraphServer(token_checker=token_server.is_valid, concurrency_limit=4) as server:
        server.add_mailbox(INGRID)
        server.add_mailbox(LARS)
        yield server


class Syncd(SyncdCli):
    def __init__(self, store_url: str, tmp_path: Path, graph: FakeGraphServer, token_server: FakeTokenServer) -> None:
        config = tmp_path / "settings.toml"
        config.write_text(
            "[sync]\nmax_attempts = 4\nmax_backoff_seconds = 3\nbatch_size = 4\n"
            f'[graph]\nbase_url = "{graph.base_url}"\ntimeout_seconds = 2\n'
            f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
            "[ews]\ntimeout_seconds = 1\n"
        )
        super().__init__({
            "SYNCD_DATABASE_URL": store_url,
            "SYNCD_CONFIG": str(config),
            "SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET,
            "SYNCD_SECRET_EWS_PASSWORD": "Sv4rt-hemmelig",
        })


@pytest.fixture
def run(store_url: str, tmp_path: Path, graph: FakeGraphServer, token_server: FakeTokenServer) -> Iterator[Syncd]:
    syncd_cli = Syncd(store_url, tmp_path, graph, token_server)
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    yield syncd_cli
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


def _enroll(run: Syncd, address: str, *extra: str) -> None:
    run("mailbox", "enroll", address, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT, *extra)


def _samples() -> list[bytes]:
    return [path.read_bytes() for path in sorted((SAMPLES / "mail").glob("*.eml"))]


def test_check_creates_folder_once(run: Syncd, graph: FakeGraphServer) -> None:
    _enroll(run, INGRID)

    first = run("mailbox", "check", INGRID)
    second = run("mailbox", "check", INGRID)

    assert f"created folder '{SYNC_FOLDER}'" in first.output
    assert f"found folder '{SYNC_FOLDER}'" in second.output
    assert [folder.path for folder in graph.folders(INGRID)].count(SYNC_FOLDER) == 1


def test_samples_filed_with_categories(run: Syncd, graph: FakeGraphServer, token_server: FakeTokenServer) -> None:
    _enroll(run, INGRID)
    run("mailbox", "check", INGRID)
    for mime in _samples():
        graph.drop(INGRID, SYNC_FOLDER, mime)

    counts = run.json("sync", "--once")

    outcomes = [entry["outcome"] for entry in EXPECTED.values()]
    assert counts["filed"] == outcomes.count("filed")
    assert counts["unmatched"] == outcomes.count("unmatched")
    assert counts["duplicates"] == outcomes.count("duplicate")
    categories = [tuple(item.categories) for item in graph.items(INGRID, SYNC_FOLDER)]
    assert categories.count(("Ikke arkivert i CRM",)) == outcomes.count("unmatched")
    assert graph.max_concurrency(INGRID) <= 4
    assert len(token_server.token_requests) == 1


def test_idle_pass_makes_one_delta_request(run: Syncd, graph: FakeGraphServer) -> None:
    _enroll(run, INGRID)
    run("mailbox", "check", INGRID)
    for mime in _samples():
        graph.drop(INGRID, SYNC_FOLDER, mime)
    run("sync", "--once")
    # Graph reports syncd's own category writes as changes, so the pass
    # after the filing pass reads them once (and skips them as recorded).
    absorbing = run.json("sync", "--once")
    graph.clear_requests()

    counts = run.json("sync", "--once")

    assert absorbing["seen"] == 0
    assert counts["seen"] == 0
    paths = [record.path for record in graph.requests]
    assert len(paths) == 1
    assert "delta" in paths[0]


def test_throttling_survived(run: Syncd, graph: FakeGraphServer) -> None:
    _enroll(run, INGRID)
    run("mailbox", "check", INGRID)
    for mime in _samples():
        graph.drop(INGRID, SYNC_FOLDER, mime)
    graph.fail_next(GraphFault.THROTTLED, match="delta", retry_after=1)
    graph.fail_next(GraphFault.UNAVAILABLE, match="$batch", retry_after=1)

    counts = run.json("sync", "--once")

    assert counts["seen"] == len(EXPECTED)
    assert counts["failed"] == 0


def test_wrong_client_secret_marks_failing(run: Syncd, graph: FakeGraphServer) -> None:
    _enroll(run, INGRID)
    run.env["SYNCD_SECRET_ENTRA_CLIENT_SECRET"] = "feil-hemmelighet"

    result = run("sync", "--once", code=1)

    assert "Error: mailbox ingrid.berg@salg.example:" in result.stderr
    assert "feil-hemmelighet" not in result.output
    [status] = run.json("status")
    assert status["state"] == "failing"


def test_ews_mailbox_migrated_to_graph_refiles_nothing(run: Syncd, graph: FakeGraphServer) -> None:
    mails = _samples()
    with FakeEwsServer() as ews:
        ews.add_mailbox(INGRID)
        run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", ews.url, "--auth", "basic",
            "--username", "svc-crm@salg.example")
        run("mailbox", "check", INGRID)
        for mime in mails:
            ews.drop(INGRID, SYNC_FOLDER, mime)
        before = run.json("sync", "--once")
    filed_before = run.json("correspondence", "list")
    unmatched_before = run.json("unmatched", "list")

    result = run("mailbox", "migrate", INGRID, "--to", "graph", "--tenant", TENANT, "--client-id", CLIENT)
    # The same Exchange Online mailbox, now seen through Graph: the sync
    # folder and its mails, tagged by the EWS passes, are still there.
    run("mailbox", "check", INGRID)
    for mime in mails:
        graph.drop(INGRID, SYNC_FOLDER, mime, categories=["Arkivert i CRM"])
    after = run.json("sync", "--once")

    assert "migrated ingrid.berg@salg.example from ews to graph" in result.stdout
    assert before["seen"] == len(EXPECTED)
    assert after["filed"] == 0
    assert after["unmatched"] == 0
    assert after["duplicates"] == len(EXPECTED)
    assert len(run.json("correspondence", "list")) == len(filed_before)
    assert len(run.json("unmatched", "list")) == len(unmatched_before)
    [mailbox] = run.json("mailbox", "list")
    assert mailbox["backend"] == "graph"
