"""The unmatched queue as an admin reviews it: candidates with reasons, assign, dismiss.

Runs the real CLI on SQLite and on PostgreSQL with the CRM content of samples/crm.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import SyncdCli
from factories import make_mail

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
GMAIL_THREAD = REPO / "tests" / "data" / "threads" / "gmail"


class Syncd(SyncdCli):
    def __init__(self, store_url: str) -> None:
        super().__init__({"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": ""})


@pytest.fixture
def run(store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Syncd:
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    syncd_cli = Syncd(store_url)
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    return syncd_cli


def _import(run: Syncd, tmp_path: Path, name: str, raw: bytes) -> dict[str, int]:
    path = tmp_path / name
    path.write_bytes(raw)
    counts: dict[str, int] = run.json("import", str(path))
    return counts


def _from_fjord_marine_colleague(subject: str = "Sv: Tilbud – skrog og rigg", number: int = 1) -> bytes:
    """A mail from a Fjord Marine address that no person in the CRM has."""
    return make_mail(
        sender="Per Ås <per.as@fjordmarine.example>",
        to="Ingrid Berg <ingrid.berg@salg.example>",
        subject=subject,
        message_id=f"<per-as-{number}@fjordmarine.example>",
        text="Hei Ingrid,\n\nKari er på ferie. Vi tar skroget først, riggen i mars.\n\nPer\n",
    )


def test_thread_candidate_after_parent_filed(run: Syncd, tmp_path: Path) -> None:
    reply = make_mail(
        sender="Ola Nilsen <ola.nilsen@verft.example>",
        subject="Re: Quote: winter maintenance - spare parts",
        message_id="<verft-1@verft.example>",
        headers={"In-Reply-To": "<CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>"},
    )
    assert _import(run, tmp_path, "reply.eml", reply)["unmatched"] == 1
    run("import", str(GMAIL_THREAD / "01-ingrid-quote.eml"))

    [waiting] = run.json("unmatched", "list")

    assert waiting["candidates"] == [
        {"ref": "offer:4", "title": "Quote: winter maintenance", "reason": "thread", "score": 1.0}
    ]


def test_subject_and_address_candidates(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())

    [waiting] = run.json("unmatched", "list")

    assert waiting["candidates"] == [
        {"ref": "offer:1", "title": "Tilbud – skrog og rigg", "reason": "subject", "score": 1.0},
        {"ref": "activity:2", "title": "Oppfølging etter service", "reason": "address", "score": 0.3},
    ]


def test_weak_subject_gives_address_reason(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague("Faktura 2025-118"))

    [waiting] = run.json("unmatched", "list")

    assert [(c["ref"], c["reason"]) for c in waiting["candidates"]] == [
        ("activity:2", "address"),
        ("offer:1", "address"),
    ]


def test_public_mail_domain_gives_no_candidates(run: Syncd, tmp_path: Path) -> None:
    mail = make_mail(sender="Per Ås <per.as.1970@gmail.com>", subject="Tilbud – skrog og rigg")
    _import(run, tmp_path, "gmail.eml", mail)

    [waiting] = run.json("unmatched", "list")

    assert waiting["candidates"] == []


def test_unknown_sender_gives_no_candidates(run: Syncd) -> None:
    run("import", str(SAMPLES / "mail" / "07-unknown-sender-no-code.eml"))

    [waiting] = run.json("unmatched", "list")

    assert waiting["candidates"] == []


def test_list_prints_candidates_line(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())

    result = run("unmatched", "list")

    lines = result.stdout.splitlines()
    assert lines[0].startswith("    1  no_code  per.as@fjordmarine.example  Sv: Tilbud – skrog og rigg")
    assert lines[1] == (
        "       candidates: offer:1 'Tilbud – skrog og rigg' (subject 1.00), "
        "activity:2 'Oppfølging etter service' (address 0.30)"
    )


def test_assign_teaches_nothing(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())
    [waiting] = run.json("unmatched", "list")

    run("unmatched", "assign", str(waiting["id"]), "offer:1")
    later = _import(run, tmp_path, "per-2.eml", _from_fjord_marine_colleague("Ny sak", number=2))

    [filed] = run.json("correspondence", "list", "--record", "offer:1")
    assert {(link["ref"], link["matched_by"]) for link in filed["links"]} == {
        ("offer:1", "manual"),
        ("organisation:1", "record"),
    }
    assert later["unmatched"] == 1
    assert [entry["subject"] for entry in run.json("unmatched", "list")] == ["Ny sak"]


def test_dismissed_mail_kept_without_candidates(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())
    [waiting] = run.json("unmatched", "list")

    run("unmatched", "dismiss", str(waiting["id"]))

    assert run.json("unmatched", "list") == []
    [kept] = run.json("unmatched", "list", "--all")
    assert kept["state"] == "dismissed"
    assert kept["candidates"] == []


def test_reopened_mail_back_in_queue(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())
    [waiting] = run.json("unmatched", "list")
    run("unmatched", "dismiss", str(waiting["id"]))

    result = run("unmatched", "reopen", str(waiting["id"]))

    assert result.stdout == f"reopened unmatched mail {waiting['id']}\n"
    [reopened] = run.json("unmatched", "list")
    assert reopened["id"] == waiting["id"]
    assert reopened["state"] == "open"
    assert reopened["candidates"] == waiting["candidates"]


def test_reopen_rejects_open_or_unknown_mail(run: Syncd, tmp_path: Path) -> None:
    _import(run, tmp_path, "per.eml", _from_fjord_marine_colleague())
    [waiting] = run.json("unmatched", "list")

    not_dismissed = run("unmatched", "reopen", str(waiting["id"]), code=1)
    unknown = run("unmatched", "reopen", "999", code=1)

    assert not_dismissed.stderr == (
        f"Error: unmatched mail {waiting['id']} is open, not dismissed: only a dismissed mail can be reopened\n"
    )
    assert unknown.stderr == "Error: unmatched mail 999 does not exist: see `syncd unmatched list --all`\n"
