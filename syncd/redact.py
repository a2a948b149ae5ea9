"""Keeping secrets out of log lines: redaction and a logging filter for the HTTP libraries.

exchangelib logs Authorization headers and whole SOAP bodies at DEBUG, and
request XML at ERROR on unexpected failures; requests-oauthlib logs the
client secret and tokens at DEBUG. The filter here drops or redacts those
records wherever they are emitted.
"""

from __future__ import annotations

import logging
import re

SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\r\n]+"),
    re.compile(r"(?i)\b((?:bearer|basic|ntlm|negotiate)\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:access_token|refresh_token|client_secret|client_assertion|password)['\"]?\s*[:=]\s*['\"]?)[^'\"&,}\s]+"
    ),
)


def redact_secrets(text: str) -> str:
    """Replace Authorization header values, bearer tokens, secrets and passwords in `text` with "***"."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text



#: Loggers whose records can carry Authorization headers, tokens or whole SOAP bodies.
SENSITIVE_LOGGERS = (
    "exchangelib.util",
    "exchangelib.util.xml",
    "exchangelib.fields",
    "exchangelib.protocol",
    "exchangelib.services.common",
    "requests_oauthlib.oauth2_session",
    "requests_oauthlib.oauth2_auth",
)

#: Maximum length, in characters, of a library record's message, because
#: exchangelib logs whole MIME values on conversion warnings.
MAX_LIBRARY_LOG_CHARS = 2000


class SecretLogFilter(logging.Filter):
    """Drops exchangelib's SOAP body records and redacts secrets from the EWS stack's other records.

    `exchangelib.util.xml` records (full request and response XML) are dropped.
    Records of exchangelib, requests-oauthlib, oauthlib and msal lose
    Authorization values, tokens, secrets and passwords, lose any SOAP body
    that exchangelib appends to an error, and are cut to MAX_LIBRARY_LOG_CHARS.
    Records of other loggers pass unchanged.
    """

    LIBRARY_PREFIXES = ("exchangelib", "requests_oauthlib", "oauthlib", "msal")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "exchangelib.util.xml" or record.name.startswith("exchangelib.util.xml."):
            return False
        if not record.name.startswith(self.LIBRARY_PREFIXES):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A record whose arguments do not fit its format cannot hold a
            # formatted secret; keep it as the logging module would.
            return True
        cleaned = _without_soap_bodies(redact_secrets(message))
        if len(cleaned) > MAX_LIBRARY_LOG_CHARS:
            cleaned = cleaned[:MAX_LIBRARY_LOG_CHARS] + " […]"
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def install_log_filter(*handlers: logging.Handler) -> SecretLogFilter:
    """Attach one `SecretLogFilter` to the EWS stack's sensitive loggers and to `handlers`.

    Logger filters only see records created on that logger, so the daemon's
    logging setup should also pass its handlers, which see every record.
    Calling this again adds no second filter.
    """
    existing = [f for f in logging.getLogger(SENSITIVE_LOGGERS[0]).filters if isinstance(f, SecretLogFilter)]
    log_filter = existing[0] if existing else SecretLogFilter()
    for name in SENSITIVE_LOGGERS:
        _add_filter_once(logging.getLogger(name), log_filter)
    for handler in handlers:
        _add_filter_once(handler, log_filter)
    return log_filter


def _add_filter_once(target: logging.Filterer, log_filter: SecretLogFilter) -> None:
    if not any(isinstance(f, SecretLogFilter) for f in target.filters):
        target.addFilter(log_filter)


def _without_soap_bodies(message: str) -> str:
    # exchangelib's post_ratelimited logs "Request XML: … Response XML: …" at ERROR.
    head, marker, _ = message.partition("Request XML:")
    return head + "[SOAP bodies removed]" if marker else message
