"""Builders of test mails with Norwegian and Danish defaults."""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from extract_msg.ole_writer import OleWriter

OSLO = ZoneInfo("Europe/Oslo")

DEFAULT_TEXT = "Hei Mette,\n\nVedlagt er tilbudet på skrog som avtalt.\n\nHilsen Kari\n"


def make_mail(
    *,
    subject: str = "Tilbud på skrog – æøå",
    sender: str = "Kari Nordmann <kari.nordmann@example.no>",
    to: str | Sequence[str] = "Mette Sørensen <mette.sorensen@example.dk>",
    cc: str | Sequence[str] = (),
    date: datetime | None = datetime(2024, 3, 5, 14, 30, tzinfo=OSLO),
    message_id: str | None = "<tilbud-skrog-1@example.no>",
    text: str | None = DEFAULT_TEXT,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    attachments: Sequence[tuple[bytes, str, str]] = (),
    attached_messages: Sequence[bytes] = (),
) -> bytes:
    """Build an RFC 5322 message and return its bytes.

    With both `text` and `html` the body is multipart/alternative.
    `attachments` are (data, content type, file name) triples, and each of
    `attached_messages` is attached as a message/rfc822 part.
    """
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    if to:
        message["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        message["Cc"] = cc if isinstance(cc, str) else ", ".join(cc)
    if date is not None:
        message["Date"] = format_datetime(date)
    if message_id is not None:
        message["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        message[name] = value

    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")

    for data, content_type, filename in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    for raw in attached_messages:
        message.add_attachment(message_from_bytes(raw, policy=policy.default))

    return message.as_bytes()


@dataclass
class OutlookMail:
    """Content of an Outlook .msg file for `make_outlook_msg`; addresses are (name, address) pairs."""

    subject: str = "Tilbud på skrog – æøå"
    sender_name: str = "Kari Nordmann"
    sender_email: str = "kari.nordmann@example.no"
    to: Sequence[tuple[str, str]] = (("Mette Sørensen", "mette.sorensen@example.dk"),)
    cc: Sequence[tuple[str, str]] = ()
    sent: datetime | None = datetime(2024, 3, 5, 14, 30, tzinfo=OSLO)
    message_id: str | None = "<tilbud-skrog-1@example.no>"
    body: str | None = DEFAULT_TEXT
    html: bytes | None = None
    transport_headers: str | None = None
    #: Messages embedded as Outlook items.
    attached: Sequence[OutlookMail] = ()
    #: Plain file attachments as (data, file name).
    files: Sequence[tuple[bytes, str]] = ()


def make_outlook_msg(mail: OutlookMail | None = None) -> bytes:
    """Build a Unicode Outlook .msg file (MS-OXMSG) with the streams that syncd reads."""
    writer = OleWriter()
    storages, streams = _outlook_entries(mail or OutlookMail(), "", header_size=32)
    writer.addEntry("__nameid_version1.0", storage=True)
    for name in ("__substg1.0_00020102", "__substg1.0_00030102", "__substg1.0_00040102"):
        writer.addEntry(f"__nameid_version1.0/{name}", b"")
    for storage in sorted(storages, key=len):
        writer.addEntry(storage, storage=True)
    for path, data in streams:
        writer.addEntry(path, data)

    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()


def _outlook_entries(mail: OutlookMail, prefix: str, header_size: int) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Return the storages and the streams of one message stored under `prefix`."""
    strings = {
        0x001A: "IPM.Note",
        0x0037: mail.subject,
        0x0C1A: mail.sender_name,
        0x0C1E: "SMTP",
        0x0C1F: mail.sender_email,
        0x5D01: mail.sender_email,
        0x1000: mail.body,
        0x1035: mail.message_id,
        0x007D: mail.transport_headers,
    }
    streams = [
        (f"{prefix}__substg1.0_{tag:04X}001F", _utf16(value)) for tag, value in strings.items() if value is not None
    ]
    if mail.html is not None:
        streams.append((f"{prefix}__substg1.0_10130102", mail.html))

    # PR_STORE_SUPPORT_MASK with STORE_UNICODE_OK, and PR_MESSAGE_FLAGS with
    # MSGFLAG_READ but not MSGFLAG_UNSENT.
    properties = [_long_property(0x340D, 0x40000), _long_property(0x0E07, 1)]
    if mail.sent is not None:
        properties.append(_property(0x0039, 0x0040, struct.pack("<Q", _filetime(mail.sent))))

    storages: list[str] = []
    recipients = [(1, *pair) for pair in mail.to] + [(2, *pair) for pair in mail.cc]
    for index, (kind, name, address) in enumerate(recipients):
        folder = f"{prefix}__recip_version1.0_#{index:08X}"
        storages.append(folder)
        streams += [
            (
                f"{folder}/__properties_version1.0",
                bytes(8) + _long_property(0x0C15, kind) + _long_property(0x3000, index),
            ),
            (f"{folder}/__substg1.0_3001001F", _utf16(name)),
            (f"{folder}/__substg1.0_3002001F", _utf16("SMTP")),
            (f"{folder}/__substg1.0_3003001F", _utf16(address)),
            (f"{folder}/__substg1.0_39FE001F", _utf16(address)),
        ]

    attachments = 0
    for inner in mail.attached:
        folder = f"{prefix}__attach_version1.0_#{attachments:08X}"
        storages += [folder, f"{folder}/__substg1.0_3701000D"]
        # PR_ATTACH_METHOD 5: an embedded message.
        streams.append((f"{folder}/__properties_version1.0", bytes(8) + _long_property(0x3705, 5)))
        inner_storages, inner_streams = _outlook_entries(inner, f"{folder}/__substg1.0_3701000D/", header_size=24)
        storages += inner_storages
        streams += inner_streams
        attachments += 1
    for data, filename in mail.files:
        folder = f"{prefix}__attach_version1.0_#{attachments:08X}"
        storages.append(folder)
        # PR_ATTACH_METHOD 1: the data is in PR_ATTACH_DATA_BIN.
        streams += [
            (f"{folder}/__properties_version1.0", bytes(8) + _long_property(0x3705, 1)),
            (f"{folder}/__substg1.0_37010102", data),
            (f"{folder}/__substg1.0_3707001F", _utf16(filename)),
        ]
        attachments += 1

    counts = struct.pack("<IIII", len(recipients), attachments, len(recipients), attachments)
    header = bytes(8) + counts + bytes(header_size - 24)
    streams.append((f"{prefix}__properties_version1.0", header + b"".join(properties)))
    return storages, streams


def _utf16(value: str) -> bytes:
    return value.encode("utf-16-le")


def _property(tag: int, property_type: int, value: bytes) -> bytes:
    # A fixed-length property entry: tag, flags (readable, writable), 8-byte value.
    return struct.pack("<II", (tag << 16) | property_type, 6) + value.ljust(8, b"\0")


def _long_property(tag: int, value: int) -> bytes:
    return _property(tag, 0x0003, struct.pack("<i", value))


def _filetime(value: datetime) -> int:
    """Return `value` as a Windows FILETIME: 100-nanosecond ticks since 1601 in UTC."""
    elapsed = value - datetime(1601, 1, 1, tzinfo=UTC)
    return (elapsed.days * 86_400 + elapsed.seconds) * 10_000_000 + elapsed.microseconds * 10


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Return a self-signed certificate for `key`, valid from yesterday for a year, as an Entra app's would be."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncd-kundearkiv-æøå")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
