"""Retention through the CLI: `correspondence purge` and `person forget`, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from cli_runner import SyncdCli
from factories import OSLO, OutlookMail, make_mail, make_outlook_msg
from sqlalchemy import MetaData, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from crmstore.models import (
    Correspondence,
    CorrespondenceLink,
    PersonAddress,
    ProcessedItem,
    UnmatchedMail,
)
from syncd.scrub import PLACEHOLDER

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

INGRID = "ingrid.berg@salg.example"
KARI = "kari.nordmann@fjordmarine.example"
JOHN = "john.smith@northwind.example"
#: Tracking codes of offer:1 (Kari's) and offer:4 (John's) in samples/crm.json.
KARI_OFFER = "87gnV/VSKQga80stcfDvpw=="
JOHN_OFFER = "QTBP8dPtwA2mdL4LKXOtOg=="


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


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "innboks"
    path.mkdir()
    return path


def _code(tracking_code: str) -> str:
    return f"Hei!\n\nTracking code: {tracking_code}.\n\nHilsen\n"


def _import(run: Syncd, inbox: Path) -> dict[str, int]:
    counts: dict[str, int] = run.json("import", str(inbox), "--by", INGRID)
    return counts


def _subjects(run: Syncd) -> list[str]:
    return sorted(row["subject"] for row in run.json("correspondence", "list"))


def _ledger_rows(sessions: sessionmaker[Session]) -> list[tuple[str, int | None, int | None]]:
    with sessions() as session:
        rows = session.execute(
            select(ProcessedItem.item_id, ProcessedItem.correspondence_id, ProcessedItem.unmatched_id)
            .order_by(ProcessedItem.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


# -- purge ------------------------------------------------------------------------------------


@pytest.fixture
def dated_mails(run: Syncd, inbox: Path, sessions: sessionmaker[Session]) -> None:
    """Mails sent in 2019, around midnight before 2020-01-01 in Oslo, and in 2024; one unmatched from 2019."""
    dates = {
        "gammel": datetime(2019, 3, 5, 10, 0, tzinfo=OSLO),
        "nyttårsaften": datetime(2019, 12, 31, 23, 30, tzinfo=OSLO),
        # 23:30 UTC on 31 December: after midnight in Oslo, so it stays.
        "nyttårsnatt": datetime(2020, 1, 1, 0, 30, tzinfo=OSLO),
        "ny": datetime(2024, 6, 3, 9, 15, tzinfo=OSLO),
    }
    for number, (name, date) in enumerate(dates.items()):
        (inbox / f"{number}.eml").write_bytes(
            make_mail(
                subject=f"Tilbud på skrog – {name}", sender=f"Kari Nordmann <{KARI}>", to=f"Ingrid Berg <{INGRID}>",
                date=date, message_id=f"<tilbud-{number}@fjordmarine.example>", text=_code(KARI_OFFER),
            )
        )
    (inbox / "ukjent.eml").write_bytes(
        make_mail(
            subject="Spørsmål om ærend", sender="Åse Ødegård <ase@ukjent.example>", to=f"Ingrid Berg <{INGRID}>",
            message_id="<ukjent@ukjent.example>", text="Hei, har dere ledig kapasitet i mai?\n",
        )
    )
    assert _import(run, inbox)["filed"] == 4
    with sessions() as session, session.begin():
        session.execute(update(UnmatchedMail).values(created_at=datetime(2019, 5, 1, tzinfo=OSLO)))


@pytest.mark.usefixtures("dated_mails")
def test_purge_deletes_mail_before_local_midnight(run: Syncd) -> None:
    counts = run.json("correspondence", "purge", "--before", "2020-01-01")

    assert counts["correspondence"] == 2
    assert _subjects(run) == ["Tilbud på skrog – ny", "Tilbud på skrog – nyttårsnatt"]


@pytest.mark.usefixtures("dated_mails")
def test_purge_counts_links_and_sources(run: Syncd, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        old_ids = select(Correspondence.id).where(Correspondence.subject.like("%nyttårsaften")
                                                  | Correspondence.subject.like("%gammel"))
        links = session.scalar(
            select(func.count()).select_from(CorrespondenceLink).where(CorrespondenceLink.correspondence_id.in_(old_ids))
        )
        total = session.scalar(select(func.count()).select_from(CorrespondenceLink))

    counts = run.json("correspondence", "purge", "--before", "2020-01-01")

    assert counts == {
        "before": "2020-01-01", "dry_run": False, "correspondence": 2, "links": links, "sources_cleared": 2,
        "unmatched": 0,
    }
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(CorrespondenceLink)) == total - links


@pytest.mark.usefixtures("dated_mails")
def test_purge_keeps_ledger_rows(run: Syncd, sessions: sessionmaker[Session]) -> None:
    before = _ledger_rows(sessions)

    run("correspondence", "purge", "--before", "2020-01-01", "--include-unmatched")

    after = _ledger_rows(sessions)
    assert [row[0] for row in after] == [row[0] for row in before]
    assert sum(1 for _, correspondence, _ in after if correspondence is not None) == 2
    assert all(unmatched is None for _, _, unmatched in after)


@pytest.mark.usefixtures("dated_mails")
def test_purged_mail_not_filed_again(run: Syncd, inbox: Path) -> None:
    run("correspondence", "purge", "--before", "2020-01-01", "--include-unmatched")

    counts = _import(run, inbox)

    assert counts["filed"] == 0
    assert counts["unmatched"] == 0
    assert len(_subjects(run)) == 2


@pytest.mark.usefixtures("dated_mails")
def test_purge_unmatched_only_when_asked(run: Syncd) -> None:
    without = run.json("correspondence", "purge", "--before", "2020-01-01")
    queue_after_first = run.json("unmatched", "list", "--all")

    with_flag = run.json("correspondence", "purge", "--before", "2020-01-01", "--include-unmatched")

    assert without["unmatched"] == 0
    assert len(queue_after_first) == 1
    assert with_flag["unmatched"] == 1
    assert with_flag["sources_cleared"] == 1
    assert run.json("unmatched", "list", "--all") == []


@pytest.mark.usefixtures("dated_mails")
def test_purge_by_filing_date(run: Syncd, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        session.execute(
            update(Correspondence).where(Correspondence.subject.like("%– ny")).values(filed_at=datetime(2019, 1, 2, tzinfo=OSLO))
        )

    counts = run.json("correspondence", "purge", "--before", "2020-01-01")

    assert counts["correspondence"] == 3
    assert _subjects(run) == ["Tilbud på skrog – nyttårsnatt"]


@pytest.mark.usefixtures("dated_mails")
def test_purge_dry_run_changes_nothing(run: Syncd, sessions: sessionmaker[Session]) -> None:
    ledger = _ledger_rows(sessions)

    dry = run.json("correspondence", "purge", "--before", "2020-01-01", "--include-unmatched", "--dry-run")

    assert dry["dry_run"] is True
    assert dry["correspondence"] == 2
    assert dry["unmatched"] == 1
    assert len(_subjects(run)) == 4
    assert _ledger_rows(sessions) == ledger
    assert len(run.json("unmatched", "list", "--all")) == 1


@pytest.mark.usefixtures("dated_mails")
def test_purge_prints_counts(run: Syncd) -> None:
    result = run("correspondence", "purge", "--before", "2020-01-01", "--dry-run")

    assert result.stdout.splitlines()[:2] == [
        "dry run: nothing was changed; a purge would delete",
        "correspondence sent or filed before 2020-01-01: 2",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-13-01", "Error: invalid --before '2026-13-01': use YYYY-MM-DD"),
        ("01.02.2024", "Error: invalid --before '01.02.2024': use YYYY-MM-DD"),
        ("20240101", "Error: invalid --before '20240101': use YYYY-MM-DD"),
        ("2999-01-01", "Error: invalid --before '2999-01-01': the day is after today; give today or an earlier day"),
    ],
)
def test_purge_rejects_bad_date(run: Syncd, value: str, message: str) -> None:
    result = run("correspondence", "purge", "--before", value, code=1)

    assert result.stderr == message + "\n"


@pytest.mark.usefixtures("dated_mails")
def test_purge_dry_run_takes_future_date(run: Syncd) -> None:
    dry = run.json("correspondence", "purge", "--before", "2999-01-01", "--include-unmatched", "--dry-run")

    assert dry["dry_run"] is True
    assert dry["correspondence"] == 4
    assert dry["unmatched"] == 1
    assert len(_subjects(run)) == 4


# -- forget ------------------------------------------------------------------------------------


@pytest.fixture
def kari_mails(run: Syncd, inbox: Path, sessions: sessionmaker[Session]) -> None:
    """Mail that involves Kari in every way a store can hold her address."""
    # Kari and CRM users only: deleted when she is forgotten.
    (inbox / "a-bare-kari.eml").write_bytes(
        make_mail(subject="Tilbud på skrog – bare Kari", sender=f"Kari Nordmann <{KARI}>", to=f"Ingrid Berg <{INGRID}>",
                  message_id="<a@fjordmarine.example>", text=_code(KARI_OFFER))
    )
    # John is a party too: the mail stays, without Kari.
    (inbox / "b-med-john.eml").write_bytes(
        make_mail(subject="Tilbud på skrog – med John", sender=f"Kari Nordmann <{KARI}>", to=f"Ingrid Berg <{INGRID}>",
                  cc=f"John Smith <{JOHN}>", message_id="<b@fjordmarine.example>",
                  text=_code(KARI_OFFER) + f"\nKari Nordmann\n{KARI}\n")
    )
    # Kari only named in a base64 body of a mail between Ingrid and John.
    mention = EmailMessage()
    mention["From"] = f"Ingrid Berg <{INGRID}>"
    mention["To"] = f"John Smith <{JOHN}>"
    mention["Subject"] = "Vintervedlikehold – kontaktperson"
    mention["Message-ID"] = "<c@salg.example>"
    mention["Date"] = "Mon, 03 Jun 2024 09:15:00 +0200"
    mention.set_content(_code(JOHN_OFFER) + f"Spør gjerne Kari på {KARI} – hun kjenner båten.\n", cte="base64")
    (inbox / "c-omtale.eml").write_bytes(mention.as_bytes())
    # An Outlook file, whose raw copy cannot be rewritten.
    (inbox / "d-outlook.msg").write_bytes(
        make_outlook_msg(OutlookMail(
            subject="Rigg – æøå", sender_name="Kari Nordmann", sender_email=KARI,
            to=(("Ingrid Berg", INGRID),), cc=(("John Smith", JOHN),),
            message_id="<d@fjordmarine.example>", body=_code(KARI_OFFER),
        ))
    )
    # An unknown sender naming Kari: waits in the unmatched queue.
    (inbox / "e-ukjent.eml").write_bytes(
        make_mail(subject="Kapasitet i mai", sender="Åse Ødegård <ase@ukjent.example>", to=f"Ingrid Berg <{INGRID}>",
                  message_id="<e@ukjent.example>", text=f"Kari ({KARI}) ba meg skrive til deg.\n")
    )
    counts = _import(run, inbox)
    assert counts["filed"] == 4
    assert counts["unmatched"] == 1

    # A failed mail from Kari alone: the queue keeps its raw copy.
    with sessions() as session, session.begin():
        raw = make_mail(subject="Ødelagt", sender=f"Kari Nordmann <{KARI}>", to=f"Ingrid Berg <{INGRID}>",
                        message_id="<f@fjordmarine.example>")
        entry = UnmatchedMail(message_id="f@fjordmarine.example", subject="Ødelagt", sender=KARI, outcome="failed",
                              reason="error", detail="parse stage failed", raw_mime=raw)
        session.add(entry)
        session.flush()
        session.add(ProcessedItem(mailbox="import:" + INGRID, folder_key="failed", item_id="f", outcome="failed",
                                  unmatched_id=entry.id, feedback_pending=False))


def _stored_text(sessions: sessionmaker[Session]) -> str:
    """Every value of every table in the store, as one lower-cased text."""
    with sessions() as session:
        metadata = MetaData()
        metadata.reflect(session.get_bind())
        values: list[str] = []
        for table in metadata.sorted_tables:
            for row in session.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        values.append(raw.decode("latin-1"))
                        values.append(raw.decode("utf-16-le", "replace"))
                    else:
                        values.append(str(value))
    return "\n".join(values).lower()


@pytest.mark.usefixtures("kari_mails")
def test_forget_reports_counts(run: Syncd) -> None:
    report = run.json("person", "forget", KARI)

    assert report == {
        "dry_run": False,
        "address": KARI,
        "person": "person:1",
        "address_removed": True,
        "other_addresses": [],
        "correspondence_deleted": 1,
        "correspondence_scrubbed": 3,
        "links_removed": 2,
        "raw_rewritten": 3,
        "raw_dropped": 1,
        "unmatched_deleted": 1,
        "unmatched_scrubbed": 1,
        "sources_cleared": 2,
    }


@pytest.mark.usefixtures("kari_mails")
def test_forget_leaves_address_nowhere(run: Syncd, sessions: sessionmaker[Session]) -> None:
    assert KARI in _stored_text(sessions)

    run("person", "forget", KARI.upper())

    assert KARI not in _stored_text(sessions)


@pytest.mark.usefixtures("kari_mails")
def test_forget_keeps_other_parties(run: Syncd) -> None:
    run("person", "forget", KARI)

    mails = {row["subject"]: row for row in run.json("correspondence", "list")}
    kept = mails["Tilbud på skrog – med John"]
    assert kept["from"] is None
    assert kept["to"] == [INGRID]
    assert kept["cc"] == [JOHN]
    # Kari is person:1 at organisation:1; John is person:4 at organisation:3.
    assert {link["ref"] for link in kept["links"]} == {"offer:1", "organisation:1", "person:4", "organisation:3"}
    assert "Tilbud på skrog – bare Kari" not in mails


@pytest.mark.usefixtures("kari_mails")
def test_forget_rewrites_body_text(run: Syncd, sessions: sessionmaker[Session]) -> None:
    run("person", "forget", KARI)

    with sessions() as session:
        body = session.scalar(select(Correspondence.body_text).where(Correspondence.message_id == "c@salg.example"))
    assert f"Spør gjerne Kari på {PLACEHOLDER} – hun kjenner båten." in str(body)


@pytest.mark.usefixtures("kari_mails")
def test_forget_keeps_ledger_rows(run: Syncd, inbox: Path, sessions: sessionmaker[Session]) -> None:
    before = _ledger_rows(sessions)

    run("person", "forget", KARI)
    again = _import(run, inbox)

    assert [row[0] for row in _ledger_rows(sessions)] == [row[0] for row in before]
    assert again["filed"] == 0
    assert again["unmatched"] == 0


@pytest.mark.usefixtures("kari_mails")
def test_forget_removes_person_address(run: Syncd, sessions: sessionmaker[Session]) -> None:
    run("person", "forget", KARI)

    with sessions() as session:
        assert session.scalar(select(PersonAddress).where(PersonAddress.email == KARI)) is None


@pytest.mark.usefixtures("kari_mails")
def test_forget_dry_run_changes_nothing(run: Syncd, sessions: sessionmaker[Session]) -> None:
    stored = _stored_text(sessions)

    report = run.json("person", "forget", KARI, "--dry-run")

    assert report["dry_run"] is True
    assert report["correspondence_deleted"] == 1
    assert _stored_text(sessions) == stored


def test_forget_names_remaining_addresses(run: Syncd, inbox: Path) -> None:
    person = run.json("crm", "add-person", "--organisation", "1", "--name", "Øystein Lie",
                      "--email", "oystein@fjordmarine.example", "--email", "o.lie@fjordmarine.example")
    (inbox / "oystein.eml").write_bytes(
        make_mail(subject="Rigg", sender="Øystein Lie <oystein@fjordmarine.example>", to=f"Ingrid Berg <{INGRID}>",
                  cc="Øystein Lie <o.lie@fjordmarine.example>", message_id="<g@fjordmarine.example>",
                  text=_code(KARI_OFFER))
    )
    _import(run, inbox)

    result = run("person", "forget", "oystein@fjordmarine.example")

    assert result.stdout.splitlines() == [
        f"address: oystein@fjordmarine.example (person:{person['id']})",
        "correspondence deleted: 0",
        "correspondence cleaned: 1",
        "links to the person removed: 0",
        "raw copies rewritten: 1, dropped: 0",
        "unmatched entries deleted: 0, cleaned: 0",
        "ledger entries kept without their mail: 0",
        f"person:{person['id']} keeps o.lie@fjordmarine.example: forget each address that should go",
    ]


def test_forget_address_only_in_mail(run: Syncd, inbox: Path) -> None:
    (inbox / "ukjent.eml").write_bytes(
        make_mail(subject="Rigg", sender=f"Kari Nordmann <{KARI}>", to=f"Ingrid Berg <{INGRID}>",
                  cc="Åse Ødegård <ase@ukjent.example>", message_id="<h@fjordmarine.example>",
                  text=_code(KARI_OFFER))
    )
    _import(run, inbox)

    report = run.json("person", "forget", "ase@ukjent.example")

    assert report["person"] is None
    assert report["correspondence_scrubbed"] == 1


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nobody@ukjent.example", "Error: address 'nobody@ukjent.example' not found: no person has it and no stored mail mentions it"),
        (INGRID, f"Error: address '{INGRID}' belongs to CRM user 'Ingrid Berg': `syncd person forget` removes the addresses of contact persons"),
        ("kari", "Error: invalid email address 'kari': expected name@domain"),
    ],
)
def test_forget_rejects_address(run: Syncd, address: str, message: str) -> None:
    result = run("person", "forget", address, code=1)

    assert result.stderr == message + "\n"
