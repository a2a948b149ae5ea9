"""Tracking codes: shape, uniqueness and the rendered merge fields."""

from __future__ import annotations

import base64

import pytest

from crmstore import codes
from crmstore.refs import Ref, parse_ref


def test_new_code_is_16_bytes_base64() -> None:
    code = codes.new_code()
    assert len(code) == 24
    assert code.endswith("==")
    assert len(base64.b64decode(code, validate=True)) == 16


def test_new_codes_differ() -> None:
    assert len({codes.new_code() for _ in range(1000)}) == 1000


def test_text_rendering() -> None:
    assert codes.render_text("nXmrgOguRZt63tpjM5sSpA==") == "Tracking code: nXmrgOguRZt63tpjM5sSpA==."


def test_html_rendering_hides_in_background() -> None:
    snippet = codes.render_html("nXmrgOguRZt63tpjM5sSpA==", "#f0f0f0")
    assert "color:#f0f0f0" in snippet
    assert "font-size:1px" in snippet
    assert "Tracking code: nXmrgOguRZt63tpjM5sSpA==." in snippet


def test_html_rendering_rejects_bad_colour() -> None:
    with pytest.raises(ValueError, match="invalid background colour '#12'"):
        codes.render_html("nXmrgOguRZt63tpjM5sSpA==", "#12")


def test_ref_round_trip() -> None:
    assert parse_ref("Offer:12") == Ref("offer", 12)
    assert str(Ref("delivery", 3)) == "delivery:3"


@pytest.mark.parametrize("text", ["offer", "quote:1", "offer:x", "offer:", ":3"])
def test_bad_ref_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid REF"):
        parse_ref(text)
