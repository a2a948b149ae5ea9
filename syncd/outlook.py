"""Outlook .msg files: opening them with extract-msg, and reading their MAPI properties and bodies.

The parse stage (syncd.parse) drives the reading, and parses the messages
attached to a .msg file, because those may be RFC 5322 mail in turn.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import datetime
from email import policy
from email.message import Message
from email.parser import HeaderParser
from types import TracebackType

import extract_msg
from extract_msg.enums import ErrorBehavior, RecipientType
from extract_msg.msg_classes import MSGFile

from syncd.charset import _clean, _decode_bytes, _html_meta_charset
from syncd.headers import _as_utc, _fit_id, _normalise_id, _read_field, _reference_ids, mailbox_address
from syncd.mail import Address, ParsedMail
from syncd.rtf import _RTF_CODE_PAGE, _rtf_codec, rtf_body_content

# Outlook stores the transport headers of a received mail with this line
# in front, which is not a header.
_OUTLOOK_HEADER_PREFIX = "Microsoft Mail Internet Headers Version 2.0"


def _open_outlook(raw: bytes) -> MSGFile:
    """Open an Outlook file, reopening an ANSI file in the code page of its RTF body.

    ANSI (non-Unicode) files should name the code page of their strings in
    PR_MESSAGE_CODEPAGE. Without it extract-msg assumes ISO-8859-15, which
    garbles, say, Japanese. The RTF body that Outlook writes next to the
    strings names the same Windows code page in its \\ansicpg word.
    """
    options = {"strict": False, "delayAttachments": True, "errorBehavior": ErrorBehavior.SUPPRESS_ALL}
    outlook = extract_msg.openMsg(raw, **options)
    try:
        encoding = _ansi_encoding(outlook)
    except Exception:
        outlook.close()
        raise
    if encoding is None:
        return outlook

    outlook.close()
    return extract_msg.openMsg(raw, overrideEncoding=encoding, **options)


def _ansi_encoding(outlook: MSGFile) -> str | None:
    """Return the codec for the strings of an ANSI file that does not name one, else None."""
    if outlook.areStringsUnicode or "3FFD0003" in outlook.props:
        return None
    match = _RTF_CODE_PAGE.search((getattr(outlook, "rtfBody", None) or b"")[:1024])
    return _rtf_codec(int(match.group(1))) if match else None



def _transport_headers(outlook: MSGFile) -> Message | None:
    """Parse the stored Internet headers, which only received mail has."""
    text = outlook.getStringStream("__substg1.0_007D")
    if not text:
        return None
    if text.startswith(_OUTLOOK_HEADER_PREFIX):
        text = text[len(_OUTLOOK_HEADER_PREFIX) :].lstrip()
    return HeaderParser(policy=policy.default).parsestr(text, headersonly=True)


def _fill_from_properties(mail: ParsedMail, outlook: MSGFile) -> None:
    """Fill the fields the transport headers did not provide from MAPI properties."""
    if not mail.subject:
        mail.subject = _read_field(mail, "subject property", lambda: _string_property(outlook, "0037"), "")
    if mail.sender is None:
        mail.sender = _read_field(mail, "sender property", lambda: _outlook_sender(outlook), None)
    if not mail.to and not mail.cc:
        mail.to = _read_field(mail, "To recipients", lambda: _outlook_recipients(outlook, RecipientType.TO), [])
        mail.cc = _read_field(mail, "Cc recipients", lambda: _outlook_recipients(outlook, RecipientType.CC), [])
    if mail.date is None:
        mail.date = _read_field(mail, "date property", lambda: _outlook_date(outlook), None)
    if mail.message_id is None:
        mail.message_id = _read_field(mail, "Message-ID property", lambda: _id_property(mail, outlook, "1035"), None)
    if mail.in_reply_to is None:
        mail.in_reply_to = _read_field(
            mail, "In-Reply-To property", lambda: _id_property(mail, outlook, "1042"), None
        )
    if not mail.references:
        mail.references = _read_field(
            mail, "References property", lambda: _reference_ids(mail, _string_property(outlook, "1039")), []
        )
    if mail.thread_index is None:
        mail.thread_index = _read_field(mail, "conversation index", lambda: _conversation_index(outlook), None)


def _string_property(outlook: MSGFile, property_id: str) -> str:
    """Return the string MAPI property with this 4-digit hex tag, or ""."""
    return _clean(outlook.getStringStream(f"__substg1.0_{property_id}") or "")


def _id_property(mail: ParsedMail, outlook: MSGFile, property_id: str) -> str | None:
    return _fit_id(mail, f"property {property_id}", _normalise_id(_string_property(outlook, property_id)))


def _outlook_sender(outlook: MSGFile) -> Address | None:
    # PR_SENDER_SMTP_ADDRESS comes first, because PR_SENDER_EMAIL_ADDRESS
    # contains an Exchange X.500 name instead of an address for internal
    # senders. The "sent representing" pair names the mailbox a delegate sent for.
    name = _string_property(outlook, "0C1A") or _string_property(outlook, "0042")
    for property_id in ("5D01", "0C1F", "5D02", "0065"):
        address = mailbox_address(_string_property(outlook, property_id), name)
        if address is not None:
            return address
    return None


def _outlook_recipients(outlook: MSGFile, kind: RecipientType) -> list[Address]:
    result = []
    for recipient in getattr(outlook, "recipients", None) or []:
        if recipient.type != kind:
            continue
        address = mailbox_address(_clean(recipient.email or ""), _clean(recipient.name or ""))
        if address is not None:
            result.append(address)
    return result


def _outlook_date(outlook: MSGFile) -> datetime | None:
    value = getattr(outlook, "date", None) or getattr(outlook, "receivedTime", None)
    if not isinstance(value, datetime):
        return None
    return _as_utc(value)


def _conversation_index(outlook: MSGFile) -> str | None:
    data = outlook.getStream("__substg1.0_00710102")
    return base64.b64encode(data).decode("ascii") if data else None


def _outlook_bodies(outlook: MSGFile) -> tuple[str | None, str | None]:
    """Return the plain body and the HTML body, each None when the file has none.

    Outlook often stores the HTML only inside the compressed RTF body, and
    some files carry nothing but RTF. The RTF body is read when one of the
    other two is missing.
    """
    text = outlook.getStringStream("__substg1.0_1000")
    data = outlook.getStream("__substg1.0_10130102")
    html = _decode_bytes(data, _html_meta_charset(data)) if data else None
    if text is not None and html is not None:
        return text, html

    rtf = getattr(outlook, "rtfBody", None)
    if rtf:
        is_html, content = rtf_body_content(rtf)
        if is_html and html is None:
            html = content
        elif not is_html and text is None:
            text = content
    return text, html



class _QuietExtractMsg:
    """Quiet extract-msg's logging while at least one parse runs.

    extract-msg and its helpers log every property they miss at INFO, so
    their loggers go up to WARNING. The warnings about a missing code page
    and about overriding it are dropped as well, because `_open_outlook`
    supplies the code page. A count shared by all threads restores the
    old levels when the last parse leaves.
    """

    LOGGER_NAMES = ("extract_msg", "RTFDE", "olefile")
    CODE_PAGE_LOGGER = "extract_msg.msg_classes.msg"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved_levels: dict[str, int] = {}

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                for name in self.LOGGER_NAMES:
                    logger = logging.getLogger(name)
                    self._saved_levels[name] = logger.level
                    if logger.getEffectiveLevel() < logging.WARNING:
                        logger.setLevel(logging.WARNING)
                logging.getLogger(self.CODE_PAGE_LOGGER).addFilter(_drop_code_page_warnings)
            self._users += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name, level in self._saved_levels.items():
                    logging.getLogger(name).setLevel(level)
                logging.getLogger(self.CODE_PAGE_LOGGER).removeFilter(_drop_code_page_warnings)


def _drop_code_page_warnings(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(("Encoding property not found", "You have chosen to override the string encoding"))


_QUIET_EXTRACT_MSG = _QuietExtractMsg()
