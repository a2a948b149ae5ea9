"""Throttling hints that Exchange and Graph send with HTTP 429 and 503 answers."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Return the Retry-After header as seconds (RFC 9110: delay-seconds or an HTTP-date), or None."""
    value = next((str(v) for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
