"""Reading and writing CRM entities: organisations, persons, users and records.

Functions here add to or query the session they are given and never commit;
the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import codes
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import (
    RECORD_KINDS,
    CrmUser,
    Organisation,
    Person,
    PersonAddress,
    Record,
)
from crmstore.refs import Ref


def normalise_email(address: str) -> str:
    """Lower-case and trim an address; raise InvalidInputError when it has no @."""
    email = address.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or " " in email:
        raise InvalidInputError(f"invalid email address {address!r}: expected name@domain")
    return email


def add_organisation(session: Session, name: str) -> Organisation:
    if not name.strip():
        raise InvalidInputError("organisation name is empty: give the organisation's name")
    organisation = Organisation(name=name.strip())
    session.add(organisation)
    session.flush()
    return organisation


def add_person(session: Session, organisation_id: int, name: str, emails: Iterable[str]) -> Person:
    organisation = get_organisation(session, organisation_id)
    if not name.strip():
        raise InvalidInputError("person name is empty: give the person's full name with --name")
    addresses = [normalise_email(email) for email in emails]
    if not addresses:
        raise InvalidInputError(f"person {name!r} has no email address: give at least one --email")
    for email in addresses:
        owner = find_person_by_email(session, email)
        if owner is not None:
            raise InvalidInputError(
                f"email address {email!r} already belongs to person:{owner.id} ({owner.name})"
            )

    person = Person(organisation=organisation, name=name.strip())
    person.addresses = [PersonAddress(email=email) for email in dict.fromkeys(addresses)]
    session.add(person)
    session.flush()
    return person


def add_user(session: Session, name: str, email: str) -> CrmUser:
    if not name.strip():
        raise InvalidInputError("user name is empty: give the user's full name with --name")
    address = normalise_email(email)
    if session.scalar(select(CrmUser).where(CrmUser.email == address)) is not None:
        raise InvalidInputError(f"CRM user {address!r} already exists")
    contact = find_person_by_email(session, address)
    if contact is not None:
        raise InvalidInputError(
            f"{address!r} belongs to contact person:{contact.id} ({contact.name}): "
            "a CRM user's address decides direction, so it cannot also be a customer's"
        )
    user = CrmUser(name=name.strip(), email=address)
    session.add(user)
    session.flush()
    return user


def add_record(
    session: Session,
    kind: str,
    organisation_id: int,
    title: str,
    person_id: int | None = None,
    tracking_code: str | None = None,
) -> Record:
    """Add an activity, offer or delivery with a new tracking code.

    `tracking_code` keeps the code a record already has in another system,
    so that mails already sent with it still find the record.
    """
    if kind not in RECORD_KINDS:
        raise InvalidInputError(f"invalid record kind {kind!r}: use one of {', '.join(RECORD_KINDS)}")
    if not title.strip():
        raise InvalidInputError("record title is empty: give a title with --title")
    organisation = get_organisation(session, organisation_id)
    person = get_person(session, person_id) if person_id is not None else None
    if person is not None and person.organisation_id != organisation.id:
        raise InvalidInputError(
            f"person:{person.id} belongs to organisation:{person.organisation_id}, "
            f"not organisation:{organisation.id}"
        )

    code = tracking_code if tracking_code is not None else codes.new_code()
    if not codes.is_valid_code(code):
        raise InvalidInputError(
            f"invalid tracking code {code!r}: expected 24 characters of base64 ending in =="
        )
    owner = session.scalar(select(Record).where(Record.tracking_code == code))
    if owner is not None:
        raise InvalidInputError(f"tracking code {code!r} already belongs to {owner.kind}:{owner.id} ({owner.title})")

    record = Record(
        kind=kind, organisation=organisation, person=person, title=title.strip(), tracking_code=code
    )
    session.add(record)
    session.flush()
    return record


def get_organisation(session: Session, organisation_id: int) -> Organisation:
    organisation = session.get(Organisation, organisation_id)
    if organisation is None:
        raise NotFoundError(f"organisation:{organisation_id} does not exist")
    return organisation


def get_person(session: Session, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFoundError(f"person:{person_id} does not exist")
    return person


def get_record(session: Session, ref: Ref) -> Record:
    record = session.get(Record, ref.id)
    if record is None or record.kind != ref.kind:
        raise NotFoundError(f"{ref} does not exist")
    return record


def entity_name(session: Session, ref: Ref) -> str:
    """Return the title or name of the entity `ref` names; raise NotFoundError if none."""
    if ref.is_record:
        return get_record(session, ref).title
    if ref.kind == "organisation":
        return get_organisation(session, ref.id).name
    return get_person(session, ref.id).name


def find_person_by_email(session: Session, email: str) -> Person | None:
    return session.scalar(
        select(Person).join(PersonAddress).where(PersonAddress.email == email.lower())
    )


def records_by_code(session: Session, tracking_codes: Iterable[str]) -> dict[str, Record]:
    wanted = list(dict.fromkeys(tracking_codes))
    if not wanted:
        return {}
    rows = session.scalars(select(Record).where(Record.tracking_code.in_(wanted)))
    return {record.tracking_code: record for record in rows}


def persons_by_email(session: Session, emails: Iterable[str]) -> dict[str, Person]:
    wanted = list(dict.fromkeys(email.lower() for email in emails))
    if not wanted:
        return {}
    rows = session.execute(
        select(PersonAddress.email, Person).join(Person).where(PersonAddress.email.in_(wanted))
    )
    return {email: person for email, person in rows}


def user_emails(session: Session, emails: Iterable[str]) -> set[str]:
    """Return which of `emails` belong to CRM users."""
    wanted = list(dict.fromkeys(email.lower() for email in emails))
    if not wanted:
        return set()
    return set(session.scalars(select(CrmUser.email).where(CrmUser.email.in_(wanted))))
