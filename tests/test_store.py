"""The CRM store on SQLite and PostgreSQL: entities, codes, constraints."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from crmstore import codes, crm, db
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Correspondence, ProcessedItem
from crmstore.refs import Ref


def test_migrations_reach_head(engine) -> None:
    assert db.is_current(engine)


def test_upgrade_twice_is_harmless(engine) -> None:
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()


def test_add_record_gets_valid_code(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        organisation = crm.add_organisation(session, "Fjord Marine AS")
        person = crm.add_person(session, organisation.id, "Kari Nordmann", ["Kari.Nordmann@Fjordmarine.example"])
        record = crm.add_record(session, "offer", organisation.id, "Tilbud – skrog og rigg", person.id)

    assert codes.is_valid_code(record.tracking_code)
    with sessions() as session:
        found = crm.records_by_code(session, [record.tracking_code])
        persons = crm.persons_by_email(session, ["kari.nordmann@fjordmarine.example"])
    assert found[record.tracking_code].title == "Tilbud – skrog og rigg"
    assert persons["kari.nordmann@fjordmarine.example"].name == "Kari Nordmann"


def test_record_keeps_given_code(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        organisation = crm.add_organisation(session, "Øresund Byg ApS")
        record = crm.add_record(
            session, "delivery", organisation.id, "Levering af stålbjælker", tracking_code="IAVYZz7RRH1Dmq2OgDaTFA=="
        )
    assert record.tracking_code == "IAVYZz7RRH1Dmq2OgDaTFA=="


def test_duplicate_code_rejected(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        organisation = crm.add_organisation(session, "Øresund Byg ApS")
        crm.add_record(session, "offer", organisation.id, "A", tracking_code="IAVYZz7RRH1Dmq2OgDaTFA==")
        with pytest.raises(InvalidInputError, match="already belongs"):
            crm.add_record(session, "offer", organisation.id, "B", tracking_code="IAVYZz7RRH1Dmq2OgDaTFA==")


@pytest.mark.parametrize("bad", ["short==", "IAVYZz7RRH1Dmq2OgDaTFA=", "IAVYZz7RRH1Dmq2OgDaT_A==", ""])
def test_malformed_code_rejected(sessions: sessionmaker[Session], bad: str) -> None:
    with sessions() as session, session.begin():
        organisation = crm.add_organisation(session, "Fjord Marine AS")
        with pytest.raises(InvalidInputError, match="invalid tracking code"):
            crm.add_record(session, "offer", organisation.id, "Tilbud", tracking_code=bad)


def test_person_of_other_organisation_rejected(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        fjord = crm.add_organisation(session, "Fjord Marine AS")
        oresund = crm.add_organisation(session, "Øresund Byg ApS")
        mette = crm.add_person(session, oresund.id, "Mette Sørensen", ["mette.sorensen@oresundbyg.example"])
        with pytest.raises(InvalidInputError, match="belongs to organisation"):
            crm.add_record(session, "offer", fjord.id, "Tilbud", mette.id)


def test_shared_address_rejected(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        fjord = crm.add_organisation(session, "Fjord Marine AS")
        crm.add_person(session, fjord.id, "Kari Nordmann", ["post@fjordmarine.example"])
        with pytest.raises(InvalidInputError, match="already belongs"):
            crm.add_person(session, fjord.id, "Ola Hansen", ["POST@fjordmarine.example"])


def test_missing_entities_named(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        with pytest.raises(NotFoundError, match="organisation:99"):
            crm.get_organisation(session, 99)
        with pytest.raises(NotFoundError, match="offer:7"):
            crm.get_record(session, Ref("offer", 7))


def test_ledger_rejects_second_entry(sessions: sessionmaker[Session]) -> None:
    row = {"mailbox": "ingrid.berg@salg.example", "folder_key": "f", "item_id": "i", "outcome": "filed"}
    with sessions() as session, session.begin():
        session.add(ProcessedItem(**row))
    with pytest.raises(IntegrityError):
        with sessions() as session, session.begin():
            session.add(ProcessedItem(**row))


def test_correspondence_key_unique(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        session.add(Correspondence(message_key="mid:a@b", direction="incoming"))
    with pytest.raises(IntegrityError):
        with sessions() as session, session.begin():
            session.add(Correspondence(message_key="mid:a@b", direction="incoming"))
    with sessions() as session:
        assert len(session.scalars(select(Correspondence)).all()) == 1
