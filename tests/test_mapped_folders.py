"""Mapped folders through the real CLI: map-folder and unmap-folder on a drop directory, fake EWS and fake Graph.

Every test runs on SQLite and on PostgreSQL. exchangelib and the Graph
backend talk to the fake servers on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from cli_runner import SyncdCli
from factories import make_mail
from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.token_server import FakeTokenServer

import syncd.backends
from syncd.backends.dropdir import FOLDER_MARKER

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

INGRID = "ingrid.berg@salg.example"
SYNC_FOLDER = "CRM-arkiv"
MAPPED = "Tilbud – Fjord Marine skrog"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"


class Syncd(SyncdCli):
    """Runs `syncd` commands against one store, as an admin would."""

    def __init__(self, store_url: str, tmp_path: Path, extra_settings: str = "", **secrets: str) -> None:
        config = tmp_path / "settings.toml"
        config.write_text("[sync]\nmax_attempts = 2\nmax_backoff_seconds = 1\n[ews]\ntimeout_seconds = 5\n" + extra_settings)
        super().__init__({"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": str(config), **secrets})

    def filed(self, subject: str) -> dict[str, Any]:
        [found] = [c for c in self.json("correspondence", "list") if c["subject"] == subject]
        return found


def _mail(subject: str, number: int, text: str = "Hei Ingrid,\n\nher er målene for skroget.\n\nPer\n") -> bytes:
    """A mail without a tracking code from someone the CRM does not know."""
    return make_mail(
        sender="Per Ås <per.as@verft.example>",
        to=f"Ingrid Berg <{INGRID}>",
        subject=subject,
        message_id=f"<skrog-{number}@verft.example>",
        text=text,
    )


def _links(correspondence: dict[str, Any]) -> set[tuple[str, str]]:
    return {(link["ref"], link["matched_by"]) for link in correspondence["links"]}


# -- drop directory ---------------------------------------------------------------


@pytest.fixture
def run(store_url: str, tmp_path: Path) -> Syncd:
    syncd_cli = Syncd(store_url, tmp_path)
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    return syncd_cli


@pytest.fixture
def drop(run: Syncd, tmp_path: Path) -> Path:
    directory = tmp_path / "drop"
    directory.mkdir()
    run("mailbox", "enroll", INGRID, "--backend", "folder", "--path", str(directory), "--post-action", "keep")
    return directory


def test_map_folder_creates_drop_subdirectory(run: Syncd, drop: Path) -> None:
    result = run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    assert result.stdout == (
        f"created folder {MAPPED!r} below {str(drop)!r} of {INGRID}; its mail is filed against offer:1\n"
    )
    assert (drop / MAPPED / FOLDER_MARKER).is_file()
    assert run.json("mailbox", "folders", INGRID) == [
        {"name": str(drop), "backend": "folder", "record": None},
        {"name": MAPPED, "backend": "folder", "record": "offer:1"},
    ]


def test_mapped_drop_folder_files_against_record(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    (drop / MAPPED / "maal.eml").write_bytes(_mail("Mål for skroget", 1))
    (drop / "annet.eml").write_bytes(_mail("Noe annet", 2))

    counts = run.json("sync", "--once")

    assert counts == {"seen": 2, "filed": 1, "unmatched": 1, "failed": 0, "duplicates": 0}
    filed = run.filed("Mål for skroget")
    assert _links(filed) == {("offer:1", "folder"), ("organisation:1", "record")}
    assert filed["sources"][0]["folder"] == MAPPED


def test_mapped_drop_folder_with_code_of_other_record(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    text = "Hei Ingrid,\n\ngjelder også leveransen. Sporingskode: IAVYZz7RRH1Dmq2OgDaTFA==\n\nPer\n"
    (drop / MAPPED / "begge.eml").write_bytes(_mail("Skrog og stål", 3, text))

    run("sync", "--once")

    assert _links(run.filed("Skrog og stål")) == {
        ("offer:1", "folder"),
        ("organisation:1", "record"),
        ("delivery:3", "tracking_code"),
        ("organisation:2", "record"),
    }


def test_map_folder_twice_reports_mapping(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    result = run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    assert result.stdout == f"folder {MAPPED!r} of {INGRID} is already mapped to offer:1\n"


def test_map_existing_drop_subdirectory(run: Syncd, drop: Path) -> None:
    (drop / MAPPED).mkdir()

    result = run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    assert result.stdout.startswith(f"found folder {MAPPED!r}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([MAPPED, "organisation:1"],
         "Error: 'organisation:1' is not a record: a folder maps to activity:ID, offer:ID or delivery:ID"),
        ([MAPPED, "offer:99"], "Error: offer:99 does not exist"),
        (["Arkivert", "offer:1"],
         "Error: invalid folder name 'Arkivert': syncd moves handled mail to 'Arkivert', so choose another name"),
        (["Tilbud/skrog", "offer:1"], "Error: invalid folder name 'Tilbud/skrog': a mapped folder name has no / or \\"),
        (["  ", "offer:1"], "Error: invalid folder name '': give 1 to 255 characters"),
        (["processed", "offer:1"],
         "Error: invalid folder name 'processed': syncd keeps handled files there, so choose another name"),
    ],
)
def test_map_folder_rejects_bad_input(run: Syncd, drop: Path, args: list[str], message: str) -> None:
    result = run("mailbox", "map-folder", INGRID, *args, code=1)

    assert result.stderr == message + "\n"


def test_map_folder_mapped_elsewhere_rejected(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    result = run("mailbox", "map-folder", INGRID, MAPPED, "activity:2", code=1)

    assert result.stderr == (
        f"Error: folder {MAPPED!r} of {INGRID} is mapped to offer:1: "
        f"run `syncd mailbox unmap-folder {INGRID} {MAPPED!r}` first\n"
    )


def test_unmap_folder_keeps_folder(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    result = run("mailbox", "unmap-folder", INGRID, MAPPED)
    (drop / MAPPED / "etterpaa.eml").write_bytes(_mail("Etter avkobling", 4))
    counts = run.json("sync", "--once")

    assert result.stdout == f"unmapped folder {MAPPED!r} of {INGRID} from offer:1, and the folder stays in the mailbox\n"
    assert (drop / MAPPED).is_dir()
    assert counts["seen"] == 0
    assert [row["record"] for row in run.json("mailbox", "folders", INGRID)] == [None]


def test_unmap_unknown_folder_named(run: Syncd, drop: Path) -> None:
    result = run("mailbox", "unmap-folder", INGRID, "Finnes ikke", code=1)

    assert result.stderr == (
        f"Error: folder 'Finnes ikke' of {INGRID} is not mapped: see `syncd mailbox folders {INGRID}`\n"
    )


def test_deleted_drop_folder_made_again(run: Syncd, drop: Path) -> None:
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    run("sync", "--once")
    shutil.rmtree(drop / MAPPED)

    counts = run.json("sync", "--once")

    assert counts["failed"] == 0
    assert (drop / MAPPED / FOLDER_MARKER).is_file()
    assert [row["record"] for row in run.json("mailbox", "folders", INGRID)] == [None, "offer:1"]


def test_move_post_action_empties_mapped_folder(run: Syncd, tmp_path: Path) -> None:
    directory = tmp_path / "moved"
    directory.mkdir()
    run("mailbox", "enroll", INGRID, "--backend", "folder", "--path", str(directory))
    run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    (directory / MAPPED / "maal.eml").write_bytes(_mail("Mål for skroget", 5))

    run("sync", "--once")
    again = run.json("sync", "--once")

    assert list((directory / MAPPED).glob("*.eml")) == []
    assert (directory / "processed" / MAPPED / "maal.eml").is_file()
    assert again["seen"] == 0


# -- EWS --------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[FakeEwsServer]:
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        yield server
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


@pytest.fixture
def ews_run(store_url: str, tmp_path: Path, ews: FakeEwsServer) -> Syncd:
    syncd_cli = Syncd(store_url, tmp_path, SYNCD_SECRET_EWS_PASSWORD="Sv4rt-hemmelig-æøå")
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    syncd_cli(
        "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", ews.url, "--auth", "basic",
        "--username", "svc-crm@salg.example",
    )
    return syncd_cli


def test_map_folder_on_ews(ews_run: Syncd, ews: FakeEwsServer) -> None:
    result = ews_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    ews.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Mål for skroget", 1))
    ews.drop(INGRID, SYNC_FOLDER, _mail("Noe annet", 2))

    counts = ews_run.json("sync", "--once")

    assert result.stdout.startswith(f"created folder {MAPPED!r} below {SYNC_FOLDER!r}")
    assert [folder.path for folder in ews.folders(INGRID)].count(f"{SYNC_FOLDER}/{MAPPED}") == 1
    assert counts["filed"] == 1
    assert counts["unmatched"] == 1
    assert _links(ews_run.filed("Mål for skroget")) == {("offer:1", "folder"), ("organisation:1", "record")}
    [item] = ews.items(INGRID, f"{SYNC_FOLDER}/{MAPPED}")
    assert item.categories == ["Arkivert i CRM"]


def test_idle_pass_syncs_each_ews_folder_once(ews_run: Syncd, ews: FakeEwsServer) -> None:
    ews_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    ews.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Mål for skroget", 1))
    ews_run("sync", "--once")
    ews.clear_requests()

    counts = ews_run.json("sync", "--once")

    assert counts["seen"] == 0
    operations = [record.operation for record in ews.requests if record.mailbox == INGRID]
    assert operations.count("SyncFolderItems") == 2
    assert set(operations) <= {"SyncFolderItems", "FindFolder"}


def test_unmap_folder_on_ews(ews_run: Syncd, ews: FakeEwsServer) -> None:
    ews_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    ews_run("mailbox", "unmap-folder", INGRID, MAPPED)
    ews.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Etter avkobling", 4))
    ews.clear_requests()
    counts = ews_run.json("sync", "--once")

    assert f"{SYNC_FOLDER}/{MAPPED}" in [folder.path for folder in ews.folders(INGRID)]
    assert counts["seen"] == 0
    operations = [record.operation for record in ews.requests if record.mailbox == INGRID]
    assert operations.count("SyncFolderItems") == 1


# -- Graph ------------------------------------------------------------------------


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
        yield server


@pytest.fixture
def graph_run(store_url: str, tmp_path: Path, graph: FakeGraphServer, token_server: FakeTokenServer) -> Iterator[Syncd]:
    settings = (
        f'[graph]\nbase_url = "{graph.base_url}"\ntimeout_seconds = 5\n'
        f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
    )
    syncd_cli = Syncd(
        store_url, tmp_path, settings,
        SYNCD_SECRET_ENTRA_CLIENT_SECRET=CLIENT_SECRET, SYNCD_SECRET_EWS_PASSWORD="Sv4rt-hemmelig",
    )
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    yield syncd_cli
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


def _enroll_graph(run: Syncd) -> None:
    run("mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)


def test_map_folder_on_graph(graph_run: Syncd, graph: FakeGraphServer) -> None:
    _enroll_graph(graph_run)

    graph_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    graph.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Mål for skroget", 1))
    graph.drop(INGRID, SYNC_FOLDER, _mail("Noe annet", 2))
    counts = graph_run.json("sync", "--once")

    assert [folder.path for folder in graph.folders(INGRID)].count(f"{SYNC_FOLDER}/{MAPPED}") == 1
    assert counts["filed"] == 1
    assert counts["unmatched"] == 1
    assert _links(graph_run.filed("Mål for skroget")) == {("offer:1", "folder"), ("organisation:1", "record")}


def test_idle_pass_makes_one_delta_per_graph_folder(graph_run: Syncd, graph: FakeGraphServer) -> None:
    _enroll_graph(graph_run)
    graph_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")
    graph.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Mål for skroget", 1))
    graph_run("sync", "--once")
    # The pass after the filing pass reads syncd's own category writes once.
    graph_run("sync", "--once")
    graph.clear_requests()

    counts = graph_run.json("sync", "--once")

    assert counts["seen"] == 0
    paths = [record.path for record in graph.requests]
    assert len(paths) == 2
    assert all("delta" in path for path in paths)


def test_unmap_folder_on_graph(graph_run: Syncd, graph: FakeGraphServer) -> None:
    _enroll_graph(graph_run)
    graph_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    graph_run("mailbox", "unmap-folder", INGRID, MAPPED)
    graph.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Etter avkobling", 4))
    counts = graph_run.json("sync", "--once")

    assert f"{SYNC_FOLDER}/{MAPPED}" in [folder.path for folder in graph.folders(INGRID)]
    assert counts["seen"] == 0


def test_migrated_mailbox_keeps_mapping(graph_run: Syncd, graph: FakeGraphServer) -> None:
    with FakeEwsServer() as ews:
        ews.add_mailbox(INGRID)
        graph_run(
            "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", ews.url, "--auth", "basic",
            "--username", "svc-crm@salg.example",
        )
        graph_run("mailbox", "map-folder", INGRID, MAPPED, "offer:1")

    graph_run("mailbox", "migrate", INGRID, "--to", "graph", "--tenant", TENANT, "--client-id", CLIENT)
    # The same Exchange Online mailbox seen through Graph has both folders.
    graph_run("mailbox", "check", INGRID)
    graph.drop(INGRID, SYNC_FOLDER, _mail("Noe annet", 2))
    graph_run("sync", "--once")
    graph.drop(INGRID, f"{SYNC_FOLDER}/{MAPPED}", _mail("Mål for skroget", 1))
    counts = graph_run.json("sync", "--once")

    assert counts["filed"] == 1
    assert _links(graph_run.filed("Mål for skroget")) == {("offer:1", "folder"), ("organisation:1", "record")}
    assert graph_run.json("mailbox", "folders", INGRID)[-1] == {"name": MAPPED, "backend": "graph", "record": "offer:1"}
