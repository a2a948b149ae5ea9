"""The sample mails, CRM content and expected outcomes that the quick start ships."""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
MAIL_DIR = SAMPLES_DIR / "mail"
MAIL_NAMES = sorted(path.name for path in MAIL_DIR.glob("*.eml"))

RECORD_KINDS = {"activity", "offer", "delivery"}
OUTCOMES = {"filed", "unmatched", "duplicate"}
UNMATCHED_REASONS = {"no_code", "unknown_code"}
DIRECTIONS = {"incoming", "outgoing", "internal"}
REQUIRED_HEADERS = ("Message-ID", "Date", "From", "To")

# Which matched_by values a link to each kind of target may carry.
MATCHED_BY_PER_TARGET = {
    "activity": {"tracking_code"},
    "offer": {"tracking_code"},
    "delivery": {"tracking_code"},
    "organisation": {"record", "address"},
    "person": {"address"},
}

TRACKING_CODE = re.compile(r"[A-Za-z0-9+/]{22}==")
LABELLED_CODE = re.compile(r"(?:trackingcode|sporingskode):([A-Za-z0-9+/]{22}==)", re.IGNORECASE)
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
HTML_TAG = re.compile(r"<[^>]*>")
# White space, quote markers and zero-width characters that mail clients and
# copy-paste put inside a code. None of them is a base64 character.
CODE_NOISE = re.compile(r"[\s>\u200b\u200c\u200d\u2060\ufeff]")

# Header lines of an inline forwarded message, as Outlook and Gmail write them
# in Norwegian, Danish and English.
FORWARD_SENDER_LINE = re.compile(r"^(?:Fra|From):\s*(.*)$")
FORWARD_ADDRESS_LINE = re.compile(r"^(?:Fra|From|Til|To|Kopi|Cc):\s*(.*)$", re.IGNORECASE)
FORWARD_SUBJECT_LINE = re.compile(r"^(?:Emne|Subject):\s*(.*)$")

# RFC 5322, section 2.1.1: a line must not exceed 998 characters plus CRLF.
MAX_LINE_OCTETS = 998


@dataclass(frozen=True)
class RecordedMail:
    """The mail that syncd records for a sample: the sample itself or the one it forwards."""

    sender: str
    subject: str
    addresses: list[str]


def read_json(name: str) -> Any:
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def parse_mail(name: str) -> EmailMessage:
    raw = (MAIL_DIR / name).read_bytes()
    return BytesParser(policy=policy.default).parsebytes(raw)


def header_addresses(message: EmailMessage, *names: str) -> list[str]:
    """Return the lower-cased addresses of the named headers, in header order."""
    addresses = []
    for name in names:
        header = message[name]
        if header is None:
            continue
        addresses.extend(address.addr_spec.lower() for address in header.addresses)
    return addresses


def nested_messages(message: EmailMessage) -> list[EmailMessage]:
    return [part.get_content() for part in message.walk() if part.get_content_type() == "message/rfc822"]


def text_parts(message: EmailMessage) -> list[EmailMessage]:
    return [part for part in message.walk() if part.get_content_maintype() == "text"]


def plain_text(message: EmailMessage) -> str:
    """Return the text of the first text/plain part, nested messages included."""
    for part in text_parts(message):
        if part.get_content_type() == "text/plain":
            return part.get_content()
    return ""


def normalised_content(message: EmailMessage) -> str:
    """Join every subject and text part, then drop tags and the noise a code can carry.

    This is deliberately crude: it shows that a sample carries a code, not how
    syncd's detect stage finds it.
    """
    chunks = [str(message["Subject"] or "")]
    chunks.extend(str(nested["Subject"] or "") for nested in nested_messages(message))

    for part in text_parts(message):
        content = part.get_content()
        if part.get_content_subtype() == "html":
            content = html.unescape(HTML_TAG.sub("", content))
        chunks.append(content)

    return CODE_NOISE.sub("", "\n".join(chunks))


def inline_forward(message: EmailMessage) -> RecordedMail | None:
    """Read the first forwarded header block (Fra:/From: up to a blank line) in the plain text."""
    lines = plain_text(message).splitlines()
    start = next((i for i, line in enumerate(lines) if FORWARD_SENDER_LINE.match(line)), None)
    if start is None:
        return None

    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)

    sender_match = ADDRESS.search(FORWARD_SENDER_LINE.match(block[0]).group(1))
    subjects = [match.group(1) for line in block if (match := FORWARD_SUBJECT_LINE.match(line))]
    addresses = []
    for line in block:
        address_line = FORWARD_ADDRESS_LINE.match(line)
        if address_line:
            addresses.extend(found.lower() for found in ADDRESS.findall(address_line.group(1)))

    if sender_match is None or not subjects:
        return None
    return RecordedMail(sender=sender_match.group(0).lower(), subject=subjects[0], addresses=addresses)


def recorded_mail(message: EmailMessage, expected_sender: str) -> RecordedMail | None:
    """Find the mail whose sender is `expected_sender`: the sample, an attached mail, or an inline forward."""
    for candidate in [message, *nested_messages(message)]:
        senders = header_addresses(candidate, "From")
        if senders == [expected_sender]:
            return RecordedMail(
                sender=expected_sender,
                subject=str(candidate["Subject"] or ""),
                addresses=header_addresses(candidate, "From", "To", "Cc"),
            )

    forwarded = inline_forward(message)
    if forwarded is not None and forwarded.sender == expected_sender:
        return forwarded
    return None


def derived_links(
    crm: dict[str, Any], record_titles: list[tuple[str, str]], person_names: list[str]
) -> set[tuple[str, str, str]]:
    """Apply the links rule: each record and its organisation, each person and theirs."""
    organisation_names = {organisation["key"]: organisation["name"] for organisation in crm["organisations"]}
    links: set[tuple[str, str, str]] = set()

    for kind, title in record_titles:
        record = next(r for r in crm["records"] if (r["kind"], r["title"]) == (kind, title))
        links.add((kind, title, "tracking_code"))
        links.add(("organisation", organisation_names[record["organisation"]], "record"))

    for name in person_names:
        person = next(p for p in crm["persons"] if p["name"] == name)
        links.add(("person", name, "address"))
        links.add(("organisation", organisation_names[person["organisation"]], "address"))

    return links


@pytest.fixture(scope="module")
def crm() -> dict[str, Any]:
    return read_json("crm.json")


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return read_json("expected.json")


@pytest.fixture(scope="module")
def crm_codes(crm: dict[str, Any]) -> set[str]:
    return {record["tracking_code"] for record in crm["records"]}


@pytest.fixture(scope="module")
def user_addresses(crm: dict[str, Any]) -> set[str]:
    return {user["email"] for user in crm["users"]}


@pytest.fixture(scope="module")
def person_by_address(crm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {email: person for person in crm["persons"] for email in person["emails"]}


# The mails themselves.


def test_samples_present() -> None:
    assert len(MAIL_NAMES) >= 10, f"expected at least 10 .eml files in {MAIL_DIR}, found {MAIL_NAMES}"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_parses_without_defects(name: str) -> None:
    message = parse_mail(name)

    for part in message.walk():
        assert part.defects == [], f"{name}: {part.get_content_type()} part has defects {part.defects!r}"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_has_required_headers(name: str) -> None:
    message = parse_mail(name)

    for header in REQUIRED_HEADERS:
        assert message[header], f"{name}: header {header} is missing or empty"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_date_is_aware(name: str) -> None:
    date = parse_mail(name)["Date"].datetime

    assert date.tzinfo is not None, f"{name}: Date {date!r} has no time zone"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_text_parts_have_content(name: str) -> None:
    parts = text_parts(parse_mail(name))

    assert parts, f"{name}: no text part"
    for part in parts:
        assert part.get_content().strip(), f"{name}: {part.get_content_type()} part decodes to no text"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_uses_example_domains(name: str) -> None:
    message = parse_mail(name)

    for candidate in [message, *nested_messages(message)]:
        for address in header_addresses(candidate, "From", "To", "Cc"):
            assert address.endswith(".example"), f"{name}: {address!r} is not in an .example domain"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_sample_lines_within_limit(name: str) -> None:
    lines = (MAIL_DIR / name).read_bytes().splitlines()

    longest = max(len(line) for line in lines)
    assert longest <= MAX_LINE_OCTETS, f"{name}: a line has {longest} octets, more than {MAX_LINE_OCTETS}"


# The CRM content.


def test_crm_sections_present(crm: dict[str, Any]) -> None:
    assert set(crm) == {"organisations", "persons", "users", "records"}


def test_crm_keys_unique(crm: dict[str, Any]) -> None:
    for section in ("organisations", "persons"):
        keys = [entry["key"] for entry in crm[section]]
        assert len(keys) == len(set(keys)), f"{section} repeat a key: {keys}"


def test_crm_names_unique(crm: dict[str, Any]) -> None:
    """Names must be unique because expected.json names link targets by name."""
    for section, field in (("organisations", "name"), ("persons", "name"), ("records", "title")):
        names = [entry[field] for entry in crm[section]]
        assert len(names) == len(set(names)), f"{section} repeat a {field}: {names}"


@pytest.mark.parametrize("record", read_json("crm.json")["records"], ids=lambda record: record["tracking_code"])
def test_crm_tracking_code_is_16_bytes(record: dict[str, Any]) -> None:
    code = record["tracking_code"]

    assert TRACKING_CODE.fullmatch(code), f"{code!r} is not 24 characters of standard base64 ending in =="
    try:
        decoded = base64.b64decode(code, validate=True)
    except binascii.Error as exc:
        pytest.fail(f"{code!r} is not valid base64: {exc}")
    assert len(decoded) == 16, f"{code!r} decodes to {len(decoded)} bytes, expected 16"


def test_crm_tracking_codes_unique(crm: dict[str, Any]) -> None:
    codes = [record["tracking_code"] for record in crm["records"]]

    assert len(codes) == len(set(codes))


def test_crm_record_kinds_known(crm: dict[str, Any]) -> None:
    for record in crm["records"]:
        assert record["kind"] in RECORD_KINDS, f"record {record['title']!r} has unknown kind {record['kind']!r}"


def test_crm_person_organisations_exist(crm: dict[str, Any]) -> None:
    organisation_keys = {organisation["key"] for organisation in crm["organisations"]}

    for person in crm["persons"]:
        assert person["organisation"] in organisation_keys, f"person {person['key']!r} names unknown organisation"


def test_crm_record_references_exist(crm: dict[str, Any]) -> None:
    organisation_keys = {organisation["key"] for organisation in crm["organisations"]}
    person_organisation = {person["key"]: person["organisation"] for person in crm["persons"]}

    for record in crm["records"]:
        title = record["title"]
        assert record["organisation"] in organisation_keys, f"record {title!r} names unknown organisation"
        if record["person"] is not None:
            assert record["person"] in person_organisation, f"record {title!r} names unknown person"
            assert person_organisation[record["person"]] == record["organisation"], (
                f"record {title!r}: person {record['person']!r} works at another organisation"
            )


def test_crm_addresses_lower_case_and_unique(crm: dict[str, Any]) -> None:
    addresses = [email for person in crm["persons"] for email in person["emails"]]
    addresses += [user["email"] for user in crm["users"]]

    assert len(addresses) == len(set(addresses)), f"an address belongs to two people: {addresses}"
    for address in addresses:
        assert address == address.lower(), f"{address!r} is not lower-cased"
        assert address.isascii(), f"{address!r} has a non-ASCII local part or domain"


# The expected outcomes.


def test_expected_covers_every_sample(expected: dict[str, Any]) -> None:
    assert sorted(expected) == MAIL_NAMES


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_fields_valid(expected: dict[str, Any], name: str) -> None:
    entry = expected[name]

    assert set(entry) == {"outcome", "reason", "links", "direction", "from", "subject"}
    assert entry["outcome"] in OUTCOMES
    assert entry["direction"] in DIRECTIONS


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_reason_fits_outcome(expected: dict[str, Any], name: str) -> None:
    entry = expected[name]

    if entry["outcome"] == "unmatched":
        assert entry["reason"] in UNMATCHED_REASONS
        assert entry["links"] == [], f"{name}: an unmatched mail has no links"
    else:
        assert entry["reason"] is None
        assert entry["links"], f"{name}: a {entry['outcome']} mail has links"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_links_name_crm_entities(crm: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    targets = {("organisation", organisation["name"]) for organisation in crm["organisations"]}
    targets |= {("person", person["name"]) for person in crm["persons"]}
    targets |= {(record["kind"], record["title"]) for record in crm["records"]}

    for kind, target, matched_by in expected[name]["links"]:
        assert (kind, target) in targets, f"{name}: link target {kind} {target!r} is not in crm.json"
        assert matched_by in MATCHED_BY_PER_TARGET[kind], f"{name}: a {kind} link cannot be matched by {matched_by!r}"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_links_follow_rule(crm: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    links = [tuple(link) for link in expected[name]["links"]]
    record_titles = [(kind, target) for kind, target, _ in links if kind in RECORD_KINDS]
    person_names = [target for kind, target, _ in links if kind == "person"]

    assert len(links) == len(set(links)), f"{name}: a link is listed twice"
    assert set(links) == derived_links(crm, record_titles, person_names)


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_sender_found(expected: dict[str, Any], name: str) -> None:
    sender = expected[name]["from"]

    assert recorded_mail(parse_mail(name), sender) is not None, (
        f"{name}: {sender!r} is neither the sender, an attached mail's sender, nor a forwarded mail's sender"
    )


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_subject_matches_mail(expected: dict[str, Any], name: str) -> None:
    entry = expected[name]
    recorded = recorded_mail(parse_mail(name), entry["from"])

    assert recorded is not None
    assert recorded.subject == entry["subject"]


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_persons_match_addresses(
    expected: dict[str, Any], person_by_address: dict[str, dict[str, Any]], name: str
) -> None:
    """Every person whose address is on the recorded mail is linked, and no one else."""
    entry = expected[name]
    recorded = recorded_mail(parse_mail(name), entry["from"])
    linked = {target for kind, target, _ in entry["links"] if kind == "person"}

    assert recorded is not None
    on_mail = {person_by_address[a]["name"] for a in recorded.addresses if a in person_by_address}
    assert linked == on_mail


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_direction_matches_addresses(expected: dict[str, Any], user_addresses: set[str], name: str) -> None:
    entry = expected[name]
    recorded = recorded_mail(parse_mail(name), entry["from"])

    assert recorded is not None
    # Internal is tested first because a mail among users also has a user as sender.
    if all(address in user_addresses for address in recorded.addresses):
        assert entry["direction"] == "internal"
    elif recorded.sender in user_addresses:
        assert entry["direction"] == "outgoing"
    else:
        assert entry["direction"] == "incoming"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_codes_in_mail(crm: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    content = normalised_content(parse_mail(name))
    code_by_title = {record["title"]: record["tracking_code"] for record in crm["records"]}

    for kind, target, _ in expected[name]["links"]:
        if kind in RECORD_KINDS:
            assert code_by_title[target] in content, f"{name}: the code of {target!r} is not in the mail"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_unlinked_codes_absent(
    crm: dict[str, Any], expected: dict[str, Any], crm_codes: set[str], name: str
) -> None:
    """A mail carries no CRM code beyond those of its linked records."""
    content = normalised_content(parse_mail(name))
    linked_titles = {target for kind, target, _ in expected[name]["links"] if kind in RECORD_KINDS}
    linked_codes = {record["tracking_code"] for record in crm["records"] if record["title"] in linked_titles}

    for code in crm_codes - linked_codes:
        assert code not in content, f"{name}: carries {code!r}, which expected.json does not link"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_unknown_code_labelled(expected: dict[str, Any], crm_codes: set[str], name: str) -> None:
    """Only an unknown_code mail carries a labelled code that crm.json does not hold."""
    labelled = set(LABELLED_CODE.findall(normalised_content(parse_mail(name))))
    unknown = labelled - crm_codes

    if expected[name]["reason"] == "unknown_code":
        assert unknown, f"{name}: no labelled code outside crm.json"
    else:
        assert not unknown, f"{name}: labelled codes {unknown} are not in crm.json"


@pytest.mark.parametrize("name", MAIL_NAMES)
def test_expected_message_id_unique_unless_duplicate(expected: dict[str, Any], name: str) -> None:
    """A duplicate shares its Message-ID with an earlier filed sample and expects the same filing."""
    message_ids = {other: parse_mail(other)["Message-ID"] for other in MAIL_NAMES}
    earlier = [other for other in MAIL_NAMES if other < name and message_ids[other] == message_ids[name]]

    if expected[name]["outcome"] != "duplicate":
        assert earlier == [], f"{name}: Message-ID {message_ids[name]} is already used by {earlier}"
        return

    assert len(earlier) == 1, f"{name}: a duplicate needs exactly one earlier sample with its Message-ID"
    original = expected[earlier[0]]
    assert original["outcome"] == "filed"
    for field in ("links", "direction", "from", "subject"):
        assert expected[name][field] == original[field], f"{name}: {field} differs from {earlier[0]}"
