"""Tracking codes: generation, validation and rendering as merge fields.

A tracking code is 16 random bytes in standard base64: 24 characters, the
last two always "==". The CRM owns the codes, so they are made here.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import secrets

CODE_BYTES = 16
CODE_LENGTH = 24

_SHAPE = re.compile(r"[A-Za-z0-9+/]{22}==")
_COLOUR = re.compile(r"#[0-9A-Fa-f]{3}|#[0-9A-Fa-f]{6}|[A-Za-z]{3,20}")


def new_code() -> str:
    return base64.b64encode(secrets.token_bytes(CODE_BYTES)).decode("ascii")


def is_valid_code(code: str) -> bool:
    """Return whether `code` is 24 characters of standard base64 encoding 16 bytes."""
    if not _SHAPE.fullmatch(code):
        return False
    try:
        return len(base64.b64decode(code, validate=True)) == CODE_BYTES
    except binascii.Error:
        return False


def render_text(code: str) -> str:
    """Render the line a user pastes into a mail."""
    return f"Tracking code: {code}."


def render_html(code: str, background: str = "#ffffff") -> str:
    """Render the merge-field snippet a mail template inserts, hidden in `background`.

    The text takes the background colour and a one-pixel font, so the reader
    does not see it, but it survives replies and forwards as ordinary text.
    `background` is a CSS colour: #rgb, #rrggbb or a colour name.
    """
    if not _COLOUR.fullmatch(background):
        raise ValueError(
            f"invalid background colour {background!r}: use #rgb, #rrggbb or a CSS colour name"
        )

    style = f"color:{background};background-color:{background};font-size:1px;line-height:1px"
    return f'<span style="{style}">{html.escape(render_text(code))}</span>'
