"""The admin CLI: output shapes, exit codes and the exact one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_runner import SyncdCli
from click.testing import CliRunner

from crmstore import db
from syncd.cli.main import cli

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


class Syncd(SyncdCli):
    def __init__(self, store_url: str) -> None:
        super().__init__({"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": ""})


@pytest.fixture
def run(store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Syncd:
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return Syncd(store_url)


@pytest.fixture
def fjord(run: Syncd) -> dict[str, Any]:
    organisation = run.json("crm", "add-organisation", "Fjord Marine AS")
    person = run.json(
        "crm", "add-person", "--organisation", str(organisation["id"]), "--name", "Kari Nordmann",
        "--email", "kari.nordmann@fjordmarine.example", "--email", "kari@fjordmarine.example",
    )
    record = run.json(
        "crm", "add-record", "offer", "--organisation", str(organisation["id"]), "--person", str(person["id"]),
        "--title", "Tilbud – skrog og rigg",
    )
    return {"organisation": organisation["id"], "person": person["id"], **record}


def test_add_record_json_shape(fjord: dict[str, Any]) -> None:
    assert fjord["ref"] == "offer:1"
    assert len(fjord["tracking_code"]) == 24


def test_code_prints_text_line(run: Syncd, fjord: dict[str, Any]) -> None:
    result = run("crm", "code", "offer:1")
    assert result.stdout == f"Tracking code: {fjord['tracking_code']}.\n"


def test_code_prints_hidden_html(run: Syncd, fjord: dict[str, Any]) -> None:
    result = run("crm", "code", "offer:1", "--html", "--background", "#fafafa")
    assert "color:#fafafa" in result.stdout
    assert fjord["tracking_code"] in result.stdout


def test_add_user_json_shape(run: Syncd) -> None:
    assert run.json("crm", "add-user", "--name", "Ingrid Berg", "--email", "Ingrid.Berg@salg.example") == {"id": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["crm", "add-person", "--organisation", "9", "--name", "Ola", "--email", "ola@x.example"],
         "Error: organisation:9 does not exist"),
        (["crm", "add-user", "--name", "Ingrid", "--email", "ingrid"],
         "Error: invalid email address 'ingrid': expected name@domain"),
        (["crm", "code", "offer:x"],
         "Error: invalid REF 'offer:x': the ID after offer: must be a whole number"),
        (["crm", "code", "organisation:1"],
         "Error: 'organisation:1' is not a record: tracking codes belong to activity, offer or delivery"),
        (["crm", "code", "offer:5"], "Error: offer:5 does not exist"),
        (["unmatched", "assign", "99", "offer:1"],
         "Error: unmatched mail 99 does not exist: see `syncd unmatched list`"),
        (["mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", "/nonexistent/drop"],
         "Error: drop directory '/nonexistent/drop' does not exist: create it first"),
        (["sync", "--once", "--mailbox", "nobody@salg.example"],
         "Error: mailbox 'nobody@salg.example' is not enrolled: see `syncd mailbox list`"),
        (["correspondence", "list", "--record", "organisation:1"],
         "Error: --record 'organisation:1' is not a record: use activity:ID, offer:ID or delivery:ID"),
        (["import", "--by", "nobody@salg.example", "x.eml"],
         "Error: CRM user 'nobody@salg.example' does not exist: add it with `syncd crm add-user`"),
    ],
)
def test_bad_input_gives_one_line_error(run: Syncd, args: list[str], message: str) -> None:
    result = run(*args, code=1)
    assert result.stderr == message + "\n"


def test_record_with_bad_code_rejected(run: Syncd, fjord: dict[str, Any]) -> None:
    result = run(
        "crm", "add-record", "offer", "--organisation", "1", "--title", "X", "--tracking-code", "abc==", code=1
    )
    assert result.stderr == "Error: invalid tracking code 'abc==': expected 24 characters of base64 ending in ==\n"


def test_sync_needs_once(run: Syncd) -> None:
    result = run("sync", code=2)
    assert "Missing option '--once'" in result.stderr


def test_uninitialised_database_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    (tmp_path / "fresh.db").touch()
    result = CliRunner().invoke(cli, ["mailbox", "list"], env={"SYNCD_DATABASE_URL": url, "SYNCD_CONFIG": ""})
    assert result.exit_code == 1
    assert result.stderr == f"Error: the database {url} is not initialised or is outdated: run `syncd db upgrade`\n"


def test_missing_database_file_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "skrivefeil" / "crm.db"
    env = {"SYNCD_DATABASE_URL": f"sqlite:///{path}", "SYNCD_CONFIG": ""}

    result = CliRunner().invoke(cli, ["status"], env=env)

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the database file '{path}' does not exist: check the database URL or data_dir, "
        "or create it with `syncd db upgrade`\n"
    )
    assert not path.parent.exists()


def test_db_upgrade_reports_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "SYNCD_CONFIG": ""}
    first = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    second = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    head = db.head_revision()
    assert f"upgraded from empty to {head}" in first.stdout
    assert f"is up to date (revision {head})" in second.stdout


def test_database_password_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"SYNCD_DATABASE_URL": "postgresql+psycopg://syncd:topphemmelig@127.0.0.1:1/crm", "SYNCD_CONFIG": ""}
    result = CliRunner().invoke(cli, ["status"], env=env)
    assert result.exit_code == 1
    assert "topphemmelig" not in result.output


def test_assign_unmatched_files_manually(run: Syncd, fjord: dict[str, Any]) -> None:
    counts = run.json("import", str(SAMPLES / "mail" / "07-unknown-sender-no-code.eml"))
    assert counts["unmatched"] == 1
    [waiting] = run.json("unmatched", "list")
    assert waiting["reason"] == "no_code"

    result = run("unmatched", "assign", str(waiting["id"]), "offer:1")

    assert result.stdout.startswith(f"filed unmatched mail {waiting['id']} against offer:1")
    [filed] = run.json("correspondence", "list", "--record", "offer:1")
    links = {(link["ref"], link["matched_by"]) for link in filed["links"]}
    assert links == {("offer:1", "manual"), ("organisation:1", "record")}
    assert run.json("unmatched", "list") == []
    assert len(filed["sources"]) == 1


def test_dismissed_mail_stays_in_database(run: Syncd) -> None:
    run("import", str(SAMPLES / "mail" / "07-unknown-sender-no-code.eml"))
    [waiting] = run.json("unmatched", "list")

    run("unmatched", "dismiss", str(waiting["id"]))

    assert run.json("unmatched", "list") == []
    [kept] = run.json("unmatched", "list", "--all")
    assert kept["state"] == "dismissed"


def test_import_reports_bad_files_and_goes_on(run: Syncd, tmp_path: Path) -> None:
    broken = tmp_path / "broken.msg"
    broken.write_bytes(b"\xd0\xcf\x11\xe0 this is no Outlook file")
    good = tmp_path / "good.eml"
    good.write_bytes((SAMPLES / "mail" / "07-unknown-sender-no-code.eml").read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("hei")

    result = run("import", str(broken), str(good), str(notes), str(tmp_path / "missing.eml"), "--json", code=1)

    counts = json.loads(result.stdout)
    assert counts == {"seen": 2, "filed": 0, "unmatched": 1, "failed": 1, "duplicates": 0}
    assert f"Error: {notes}: not an .eml, .msg or .mbox file" in result.stderr
    assert f"Error: {tmp_path / 'missing.eml'}: no such file or directory" in result.stderr


def test_import_mbox(run: Syncd, tmp_path: Path) -> None:
    mbox = tmp_path / "arkiv.mbox"
    parts = []
    for name in ("06-known-sender-no-code.eml", "07-unknown-sender-no-code.eml"):
        body = (SAMPLES / "mail" / name).read_bytes().replace(b"\r\n", b"\n")
        parts.append(b"From someone@example Thu Dec  3 10:00:00 2026\n" + body + b"\n")
    mbox.write_bytes(b"".join(parts))

    counts = run.json("import", str(mbox))

    assert counts["seen"] == 2


def test_status_lists_mailboxes(run: Syncd, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    run("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    run("mailbox", "disable", "ingrid.berg@salg.example")

    [row] = run.json("status")

    assert row["state"] == "disabled"
    assert row["backend"] == "folder"
    assert row["last_success"] is None


def test_console_script_runs(tmp_path: Path) -> None:
    syncd = Path(sys.executable).parent / "syncd"
    done = subprocess.run([str(syncd), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "File email correspondence into the CRM by tracking code." in done.stdout


def test_crm_list_records(run: Syncd, fjord: dict[str, Any]) -> None:
    [record] = run.json("crm", "list", "records")
    assert record["ref"] == "offer:1"
    assert record["title"] == "Tilbud – skrog og rigg"
    assert record["organisation"] == "organisation:1"


def test_crm_list_persons_text(run: Syncd, fjord: dict[str, Any]) -> None:
    result = run("crm", "list", "persons")
    assert result.stdout.startswith("person:1  Kari Nordmann  organisation:1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["crm", "add-person", "--organisation", "1", "--name", " ", "--email", "ola@fjordmarine.example"],
         "Error: person name is empty: give the person's full name with --name"),
        (["crm", "add-record", "offer", "--organisation", "1", "--title", ""],
         "Error: record title is empty: give a title with --title"),
        (["crm", "add-user", "--name", "Kari", "--email", "kari@fjordmarine.example"],
         "Error: 'kari@fjordmarine.example' belongs to contact person:1 (Kari Nordmann): "
         "a CRM user's address decides direction, so it cannot also be a customer's"),
    ],
)
def test_empty_or_conflicting_entity_rejected(run: Syncd, fjord: dict[str, Any], args: list[str], message: str) -> None:
    result = run(*args, code=1)
    assert result.stderr == message + "\n"


def test_load_rejects_unknown_list(run: Syncd, tmp_path: Path) -> None:
    content = tmp_path / "crm.json"
    content.write_text('{"organisasjoner": []}')
    result = run("crm", "load", str(content), code=1)
    assert "unknown list(s) organisasjoner" in result.stderr


def test_assign_unreadable_mail_rejected(run: Syncd, fjord: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "ødelagt.msg"
    broken.write_bytes(b"\xd0\xcf\x11\xe0 this is no Outlook file")
    run("import", str(broken))
    [waiting] = run.json("unmatched", "list")

    result = run("unmatched", "assign", str(waiting["id"]), "offer:1", code=1)

    assert result.stderr == (
        f"Error: unmatched mail {waiting['id']} could not be read (parse_error): it has nothing to file; "
        f"dismiss it with `syncd unmatched dismiss {waiting['id']}`\n"
    )
