"""`syncd crm`: organisations, persons, users, records and their tracking codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import codes
from crmstore import crm as store
from crmstore.errors import InvalidInputError
from crmstore.models import CrmUser, Organisation, Person, Record
from crmstore.refs import Ref, parse_ref
from syncd.cli.context import App, pass_app, print_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group("crm")
def crm_group() -> None:
    """Add CRM entities and show tracking codes."""


@crm_group.command("add-organisation")
@click.argument("name")
@json_option
@pass_app
def add_organisation(app: App, name: str, as_json: bool) -> None:
    """Add an organisation called NAME."""
    with app.transaction() as session:
        organisation = store.add_organisation(session, name)
    _print_added(
        as_json, {"id": organisation.id}, f"added organisation:{organisation.id} {organisation.name}"
    )


@crm_group.command("add-person")
@click.option("--organisation", "organisation_id", type=int, required=True, help="Organisation ID.")
@click.option("--name", required=True, help="Full name.")
@click.option("--email", "emails", multiple=True, required=True, help="Email address; repeat for more.")
@json_option
@pass_app
def add_person(app: App, organisation_id: int, name: str, emails: tuple[str, ...], as_json: bool) -> None:
    """Add a contact person with one or more email addresses."""
    with app.transaction() as session:
        person = store.add_person(session, organisation_id, name, emails)
    _print_added(as_json, {"id": person.id}, f"added person:{person.id} {person.name}")


@crm_group.command("add-user")
@click.option("--name", required=True, help="Full name.")
@click.option("--email", required=True, help="The user's email address.")
@json_option
@pass_app
def add_user(app: App, name: str, email: str, as_json: bool) -> None:
    """Add a CRM user: a member of staff whose mail decides the direction."""
    with app.transaction() as session:
        user = store.add_user(session, name, email)
    _print_added(as_json, {"id": user.id}, f"added user {user.id} {user.name} <{user.email}>")


@crm_group.command("add-record")
@click.argument("kind", type=click.Choice(["activity", "offer", "delivery"]))
@click.option("--organisation", "organisation_id", type=int, required=True, help="Organisation ID.")
@click.option("--person", "person_id", type=int, help="Contact person ID at that organisation.")
@click.option("--title", required=True, help="Title of the record.")
@click.option(
    "--tracking-code",
    help="Keep this existing code (when records move from another system); default: a new code.",
)
@json_option
@pass_app
def add_record(
    app: App,
    kind: str,
    organisation_id: int,
    person_id: int | None,
    title: str,
    tracking_code: str | None,
    as_json: bool,
) -> None:
    """Add an activity, offer or delivery and print its tracking code."""
    with app.transaction() as session:
        record = store.add_record(session, kind, organisation_id, title, person_id, tracking_code)
    ref = str(Ref(record.kind, record.id))
    _print_added(
        as_json,
        {"ref": ref, "tracking_code": record.tracking_code},
        f"added {ref} {record.title}\n{codes.render_text(record.tracking_code)}",
    )


@crm_group.command("code")
@click.argument("ref")
@click.option("--html", "as_html", is_flag=True, help="Print the hidden HTML merge field.")
@click.option("--background", default="#ffffff", show_default=True, help="Mail background colour for --html.")
@pass_app
def code(app: App, ref: str, as_html: bool, background: str) -> None:
    """Print the tracking-code line of the record REF (e.g. offer:12)."""
    parsed = parse_ref(ref)
    if not parsed.is_record:
        raise InvalidInputError(
            f"{ref!r} is not a record: tracking codes belong to activity, offer or delivery"
        )
    with app.sessions() as session:
        record = store.get_record(session, parsed)
    text = (
        codes.render_html(record.tracking_code, background)
        if as_html
        else codes.render_text(record.tracking_code)
    )
    click.echo(text)


@crm_group.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_app
def load(app: App, path: Path, as_json: bool) -> None:
    """Add the organisations, persons, users and records listed in a JSON file.

    The file has four lists. "organisations" entries have key and name;
    "persons" have key, organisation (a key), name and emails; "users" have
    name and email; "records" have kind, organisation, an optional person,
    title and an optional tracking_code. Keys only connect entries within
    the file.
    """
    try:
        content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{str(path)!r} is not a valid JSON file: {exc}") from exc

    try:
        summary = _load_entities(app, content)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(
            f"{str(path)!r} does not have the expected shape ({type(exc).__name__}: {exc}): "
            "see `syncd crm load --help`"
        ) from exc

    if as_json:
        print_json(summary)
        return
    click.echo(
        f"loaded {summary['organisations']} organisations, {summary['persons']} persons, "
        f"{summary['users']} users and {len(summary['records'])} records from {path}"
    )


def _load_entities(app: App, content: dict[str, Any]) -> dict[str, Any]:
    unknown = set(content) - {"organisations", "persons", "users", "records"}
    if unknown:
        raise KeyError(f"unknown list(s) {', '.join(sorted(unknown))}")
    refs: dict[str, str] = {}
    with app.transaction() as session:
        organisations = {}
        for entry in content.get("organisations", []):
            organisations[entry["key"]] = store.add_organisation(session, entry["name"]).id
        persons = {}
        for entry in content.get("persons", []):
            organisation_id = organisations[entry["organisation"]]
            persons[entry["key"]] = store.add_person(
                session, organisation_id, entry["name"], entry["emails"]
            ).id
        for entry in content.get("users", []):
            store.add_user(session, entry["name"], entry["email"])
        for entry in content.get("records", []):
            person_key = entry.get("person")
            record = store.add_record(
                session,
                entry["kind"],
                organisations[entry["organisation"]],
                entry["title"],
                persons[person_key] if person_key else None,
                entry.get("tracking_code"),
            )
            refs[record.title] = str(Ref(record.kind, record.id))

    return {
        "organisations": len(organisations),
        "persons": len(persons),
        "users": len(content.get("users", [])),
        "records": refs,
    }


@crm_group.command("list")
@click.argument("what", type=click.Choice(["organisations", "persons", "users", "records"]))
@json_option
@pass_app
def list_entities(app: App, what: str, as_json: bool) -> None:
    """List organisations, persons, users or records with their ids."""
    with app.sessions() as session:
        rows = _entity_rows(session, what)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no {what}")
    for row in rows:
        click.echo("  ".join(str(value) for value in row.values() if value not in (None, "", [])))


def _entity_rows(session: Session, what: str) -> list[dict[str, Any]]:
    if what == "organisations":
        return [
            {"ref": f"organisation:{o.id}", "name": o.name}
            for o in session.scalars(select(Organisation).order_by(Organisation.id))
        ]
    if what == "persons":
        return [
            {
                "ref": f"person:{p.id}",
                "name": p.name,
                "organisation": f"organisation:{p.organisation_id}",
                "emails": [a.email for a in p.addresses],
            }
            for p in session.scalars(select(Person).order_by(Person.id))
        ]
    if what == "users":
        return [
            {"id": u.id, "name": u.name, "email": u.email}
            for u in session.scalars(select(CrmUser).order_by(CrmUser.id))
        ]
    return [
        {
            "ref": f"{r.kind}:{r.id}",
            "title": r.title,
            "organisation": f"organisation:{r.organisation_id}",
            "person": f"person:{r.person_id}" if r.person_id else None,
            "tracking_code": r.tracking_code,
        }
        for r in session.scalars(select(Record).order_by(Record.id))
    ]


def _print_added(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(text)


COMMANDS = [crm_group]
