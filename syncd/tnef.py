"""Read Outlook's TNEF format (application/ms-tnef, winmail.dat) into a subject, bodies and attachments.

tnefparse decodes single TNEF attributes and MAPI property lists. This
module walks the attribute stream itself, because the TNEF class of
tnefparse 1.4.0 copies the rest of the stream for every attribute (quadratic time), parses
attached messages recursively without a depth limit, and raises for a
stream that was cut short. Here a truncated stream keeps the attributes
before the cut, and each broken attribute costs only itself.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import compressed_rtf
from tnefparse import TNEF, TNEFObject
from tnefparse import properties as mapi
from tnefparse.codepage import Codepage
from tnefparse.mapi import IMESSAGE_SIG, decode_mapi

#: The first four bytes of every TNEF stream, little-endian 0x223E9F78.
TNEF_SIGNATURE = struct.pack("<I", TNEF.TNEF_SIGNATURE)

#: Maximum number of attributes read from one TNEF stream, attached
#: messages not included. A message has about ten and each attachment
#: about six, so real mail stays far below this. The cap bounds the time
#: spent on a crafted stream of millions of empty attributes.
MAX_TNEF_ATTRIBUTES = 10_000

# Signature (4 bytes) and legacy key (2 bytes) come before the first attribute.
_STREAM_HEADER_SIZE = 6
# Level (1 byte), attribute id (2), type (2) and data length (4) come before
# the data, and a 2-byte checksum after it ([MS-OXTNEF] section 2.1.3.1).
_ATTRIBUTE_HEADER_SIZE = 9
_ATTRIBUTE_OVERHEAD = _ATTRIBUTE_HEADER_SIZE + 2

# PidTagAttachMethod value of an attached Outlook message.
_ATTACH_EMBEDDED_MSG = 5

# tnefparse logs a warning or error for every property it cannot decode,
# which in a crafted stream can be thousands per mail. Each failure that
# matters here becomes a defect note instead.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)


@dataclass
class TnefAttachment:
    """One attachment of a TNEF stream."""

    #: Long file name, else short file name, else display name; may be "".
    name: str = ""
    #: MIME type as the sender's Outlook recorded it, lower-cased; may be "".
    mime_type: str = ""
    data: bytes = b""
    #: The TNEF stream of an attached Outlook message, else None.
    embedded: bytes | None = None


@dataclass
class TnefMessage:
    """The subject, bodies, attachments and defects of one TNEF stream. Every field may be empty."""

    subject: str = ""
    text: str = ""
    #: HTML body bytes, with the charset of PidTagInternetCodepage when the stream names one.
    html: bytes = b""
    html_charset: str | None = None
    #: Decompressed RTF body, for a message that has no plain or HTML body of its own.
    rtf: bytes = b""
    attachments: list[TnefAttachment] = field(default_factory=list)
    #: One short note per attribute or property that could not be read.
    defects: list[str] = field(default_factory=list)


def read_tnef(data: bytes) -> TnefMessage:
    """Read the TNEF stream in `data`. Bad input gives defect notes, not exceptions."""
    message = TnefMessage()
    if not data.startswith(TNEF_SIGNATURE):
        message.defects.append(f"no TNEF signature in {len(data)} bytes")
        return message

    codepage = "cp1252"
    for index, (offset, chunk) in enumerate(_attribute_chunks(message, data)):
        try:
            attribute = TNEFObject(chunk, do_checksum=False)
            if attribute.name == TNEF.ATTOEMCODEPAGE:
                codepage = _codec(struct.unpack_from("<I", attribute.data)[0]) or codepage
            else:
                _read_attribute(message, attribute, codepage)
        except Exception as exc:
            # tnefparse raises struct.error, UnicodeDecodeError and others
            # for broken attributes; the next attribute is read all the same.
            message.defects.append(f"TNEF attribute {index} at byte {offset} unreadable: {_describe(exc)}")
    return message


def _attribute_chunks(message: TnefMessage, data: bytes) -> list[tuple[int, bytes]]:
    """Split the stream into the bytes of each attribute, stopping at a truncated one."""
    chunks: list[tuple[int, bytes]] = []
    offset = _STREAM_HEADER_SIZE
    while offset < len(data):
        if len(chunks) == MAX_TNEF_ATTRIBUTES:
            message.defects.append(
                f"TNEF attributes after byte {offset} not read: "
                f"at most {MAX_TNEF_ATTRIBUTES} attributes of one TNEF stream are read"
            )
            break
        if offset + _ATTRIBUTE_OVERHEAD > len(data):
            # Some writers pad the stream, and a cut stream may end inside a header.
            message.defects.append(f"{len(data) - offset} bytes after the last TNEF attribute ignored")
            break
        end = offset + _ATTRIBUTE_OVERHEAD + struct.unpack_from("<I", data, offset + 5)[0]
        if end > len(data):
            message.defects.append(
                f"TNEF stream truncated: attribute at byte {offset} ends at byte {end}, "
                f"past the end of the {len(data)}-byte stream; the attributes before it are read"
            )
            break
        chunks.append((offset, data[offset:end]))
        offset = end
    if not chunks and not message.defects:
        message.defects.append(f"TNEF stream of {len(data)} bytes has no attributes")
    return chunks


def _read_attribute(message: TnefMessage, attribute: TNEFObject, codepage: str) -> None:
    if attribute.level == TNEF.LVL_ATTACHMENT:
        _read_attachment_attribute(message, attribute, codepage)
    elif attribute.name == TNEF.ATTSUBJECT:
        message.subject = message.subject or _text(attribute.data, codepage)
    elif attribute.name == TNEF.ATTBODY:
        message.text = message.text or _text(attribute.data, codepage)
    elif attribute.name == TNEF.ATTMAPIPROPS:
        _read_message_properties(message, _properties(attribute.data, codepage))


def _read_message_properties(message: TnefMessage, properties: dict[int, Any]) -> None:
    if mapi.MAPI_SUBJECT in properties:
        message.subject = _joined_text(properties[mapi.MAPI_SUBJECT]) or message.subject
    if mapi.MAPI_BODY in properties:
        message.text = _joined_text(properties[mapi.MAPI_BODY]) or message.text
    if mapi.MAPI_BODY_HTML in properties:
        message.html = _joined_bytes(properties[mapi.MAPI_BODY_HTML])
    codepage = properties.get(mapi.MAPI_INTERNET_CODEPAGE)
    if isinstance(codepage, bytes) and len(codepage) == 4:
        message.html_charset = _codec(struct.unpack("<i", codepage)[0])
    if mapi.MAPI_RTF_COMPRESSED in properties:
        compressed = _joined_bytes(properties[mapi.MAPI_RTF_COMPRESSED])
        try:
            message.rtf = compressed_rtf.decompress(compressed)
        except Exception as exc:
            message.defects.append(f"TNEF RTF body unreadable: {_describe(exc)}")


def _read_attachment_attribute(message: TnefMessage, attribute: TNEFObject, codepage: str) -> None:
    # Each attachment starts with its rendering attribute (attAttachRendData).
    if attribute.name == TNEF.ATTATTACHRENDDATA or not message.attachments:
        message.attachments.append(TnefAttachment())
    attachment = message.attachments[-1]

    if attribute.name == TNEF.ATTATTACHTITLE:
        attachment.name = attachment.name or _text(attribute.data, codepage)
    elif attribute.name == TNEF.ATTATTACHDATA:
        attachment.data = attachment.data or attribute.data
    elif attribute.name == TNEF.ATTATTACHMENT:
        properties = _properties(attribute.data, codepage)
        for property_id in (mapi.MAPI_ATTACH_LONG_FILENAME, mapi.MAPI_ATTACH_FILENAME, mapi.MAPI_DISPLAY_NAME):
            name = _joined_text(properties.get(property_id, []))
            if name:
                attachment.name = name
                break
        attachment.mime_type = _joined_text(properties.get(mapi.MAPI_ATTACH_MIME_TAG, [])).strip().lower()
        content = _joined_bytes(properties.get(mapi.MAPI_ATTACH_DATA_OBJ, []))
        method = properties.get(mapi.MAPI_ATTACH_METHOD)
        is_message = isinstance(method, bytes) and method[:1] == bytes([_ATTACH_EMBEDDED_MSG])
        # An attached message is a TNEF stream of its own behind the
        # IMessage interface GUID ([MS-OXTNEF] section 2.1.3.4.1).
        if content.startswith(IMESSAGE_SIG) and (is_message or method is None):
            attachment.embedded = content[len(IMESSAGE_SIG) :]
        elif content:
            attachment.data = content


def _properties(data: bytes, codepage: str) -> dict[int, Any]:
    """Decode a MAPI property list into raw values by property id; named properties are left out."""
    # decode_mapi loops as many times as the count in the first four bytes
    # gives, even past the end of the data. Each property takes at least
    # four bytes, so a larger count is cut to the maximum that can fit.
    count = struct.unpack_from("<I", data)[0]
    max_count = max(0, (len(data) - 4) // 4)
    if count > max_count:
        data = struct.pack("<I", max_count) + data[4:]
    values: dict[int, Any] = {}
    for prop in decode_mapi(_BoundedBytes(data), codepage):
        if not prop.guid:
            values.setdefault(prop.name, prop.raw_data)
    return values


class _BoundedBytes(bytes):
    """Bytes whose slices raise IndexError past the end instead of coming back short.

    decode_mapi reads multi-valued properties in a loop of the length the
    data gives, and reading past the end would run that loop for up to 2**32
    empty values. The error stops decode_mapi, which keeps the properties
    read before it.
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and key.stop is not None and key.stop > len(self):
            raise IndexError(f"MAPI value ends at byte {key.stop}, past the end of {len(self)} bytes")
        value = super().__getitem__(key)
        return bytes(value) if isinstance(value, bytes) else value


def _joined_text(raw: Any) -> str:
    # String properties come as a list of values, each ending in NUL.
    if isinstance(raw, list):
        return "".join(item.rstrip("\x00") for item in raw if isinstance(item, str))
    return ""


def _joined_bytes(raw: Any) -> bytes:
    if isinstance(raw, list):
        return b"".join(item for item in raw if isinstance(item, bytes))
    return b""


def _text(data: bytes, codepage: str) -> str:
    return data.decode(codepage, "replace").rstrip("\x00")


def _codec(code_page: int) -> str | None:
    name = Codepage(code_page).best_guess()
    try:
        if name is not None:
            "".encode(name)
            return name
    except LookupError:
        pass
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
