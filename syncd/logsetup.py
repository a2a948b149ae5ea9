"""Logging set-up for the CLI and the daemon; library modules only create loggers."""

from __future__ import annotations

import logging
import sys

from syncd.redact import install_log_filter

#: Loggers of libraries that log request headers, bodies or tokens at DEBUG
#: (exchangelib logs the Authorization header, requests_oauthlib the client
#: secret). They stay at WARNING whatever syncd's own level is.
CHATTY_LIBRARIES = ("exchangelib", "requests_oauthlib", "oauthlib", "urllib3", "msal", "extract_msg", "RTFDE")


def configure_logging(level: str = "INFO") -> None:
    """Send log lines to stderr, where systemd's journal collects them."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # Every handler of the root logger gets the filter, also one that was
    # there before syncd's, because each of them receives the libraries' records.
    install_log_filter(*root.handlers)
    root.setLevel(logging.WARNING)
    logging.getLogger("syncd").setLevel(level)
    logging.getLogger("crmstore").setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
