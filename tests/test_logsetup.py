"""Log lines as text or JSON: fields, one line per record, secrets kept out."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_runner import SyncdCli

from syncd import logsetup
from syncd.logsetup import JsonLogFormatter, configure_logging
from syncd.redact import install_log_filter
from syncd.settings import Settings

MAILBOX = "ingrid.berg@salg.example"
SECRET = "Sv4rt-hemmelig-æøå"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _record(message: str, *args: object, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("syncd.sync", level, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_fields() -> None:
    record = _record("mailbox %s: pass done, filed %d", MAILBOX, 3, mailbox=MAILBOX, item="AAMkAGI2=")

    line = JsonLogFormatter().format(record)
    entry = json.loads(line)

    assert set(entry) == {"time", "level", "logger", "message", "mailbox", "item"}
    assert entry["level"] == "INFO"
    assert entry["logger"] == "syncd.sync"
    assert entry["message"] == f"mailbox {MAILBOX}: pass done, filed 3"
    assert entry["mailbox"] == MAILBOX
    assert entry["item"] == "AAMkAGI2="
    assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
    assert abs(datetime.fromisoformat(entry["time"]).timestamp() - record.created) < 0.001


def test_json_line_without_context_fields() -> None:
    entry = json.loads(JsonLogFormatter().format(_record("syncd started")))

    assert set(entry) == {"time", "level", "logger", "message"}


def test_json_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("Ugyldig «emne»\nandre linje")
    except ValueError:
        record = logging.LogRecord("syncd.daemon", logging.ERROR, __file__, 1, "pass failed", None, True)
        record.exc_info = sys.exc_info()

    line = JsonLogFormatter().format(record)
    entry = json.loads(line)

    assert "\n" not in line
    assert "«emne»" in line
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: Ugyldig «emne»\nandre linje")


@pytest.fixture
def json_handler() -> Iterator[io.StringIO]:
    """A JSON handler with the secret filter on the exchangelib and requests-oauthlib loggers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    install_log_filter(handler)
    loggers = [logging.getLogger(name) for name in ("exchangelib", "requests_oauthlib")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield stream
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_output_redacts_secrets(json_handler: io.StringIO) -> None:
    logging.getLogger("exchangelib.protocol").debug("headers: {'Authorization': 'Basic %s'}", SECRET)
    logging.getLogger("requests_oauthlib.oauth2_session").debug("body: client_secret=%s&scope=x", SECRET)
    logging.getLogger("exchangelib.util.xml").debug("Request XML: <t:Password>%s</t:Password>", SECRET)

    lines = json_handler.getvalue().splitlines()

    assert SECRET not in json_handler.getvalue()
    assert len(lines) == 2
    entries = [json.loads(line) for line in lines]
    assert entries[0]["message"] == "headers: {'Authorization': '***'}"
    assert entries[1]["message"] == "body: client_secret=***&scope=x"


@pytest.fixture
def bare_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], logging.Logger]]:
    """Return a function that takes the handlers off the root logger, as `syncd run` finds it.

    pytest adds its capture handlers when the test starts, after the
    fixtures, so the test calls the function first. The handlers come back
    afterwards.
    """
    root = logging.getLogger()
    saved: list[logging.Handler] = []
    monkeypatch.setattr(logsetup, "_handler", None)

    def strip() -> logging.Logger:
        saved.extend(root.handlers)
        for handler in saved:
            root.removeHandler(handler)
        return root

    yield strip
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)


def test_configure_logging_writes_json(
    bare_root: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    root = bare_root()
    configure_logging("INFO", "json")
    logging.getLogger("syncd.sync").info("mailbox %s: pass done", MAILBOX, extra={"mailbox": MAILBOX})
    logging.getLogger("exchangelib.protocol").warning("retrying with Authorization: Bearer %s", SECRET + "0123456789")

    lines = capsys.readouterr().err.splitlines()

    assert len(root.handlers) == 1
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == f"mailbox {MAILBOX}: pass done"
    assert first["mailbox"] == MAILBOX
    assert second["logger"] == "exchangelib.protocol"
    assert SECRET not in lines[1]


def test_configure_logging_switches_format(
    bare_root: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    root = bare_root()
    configure_logging("INFO", "json")
    configure_logging("INFO", "text")
    logging.getLogger("syncd.daemon").info("settings reloaded")

    [line] = capsys.readouterr().err.splitlines()

    assert len(root.handlers) == 1
    assert line.endswith(" INFO syncd.daemon: settings reloaded")


def test_log_format_defaults_to_text() -> None:
    assert Settings().log_format == "text"


def test_bad_log_format_rejected(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('log_format = "xml"\n')
    cli = SyncdCli({"SYNCD_CONFIG": str(config), "SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'crm.db'}"})

    result = cli("status", code=1)

    [line] = result.stderr.splitlines()
    assert line.startswith("Error: invalid setting log_format = 'xml' in ")
    assert "'text' or 'json'" in line
    assert "SYNCD_LOG_FORMAT" in line


def test_json_pass_lines_carry_context(store_url: str, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "reply.eml").write_bytes((SAMPLES / "mail" / "01-reply-quoted-code-qp.eml").read_bytes())
    cli = SyncdCli({"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": ""})
    cli("crm", "load", str(SAMPLES / "crm.json"))
    cli("mailbox", "enroll", MAILBOX, "--backend", "folder", "--path", str(drop))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("syncd")
    logger.addHandler(handler)
    try:
        cli("sync", "--once")
    finally:
        logger.removeHandler(handler)

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    [done] = [entry for entry in entries if ": pass done in " in entry["message"]]
    [filed] = [entry for entry in entries if " filed from " in entry["message"]]
    assert done["mailbox"] == MAILBOX
    assert "item" not in done
    assert filed["mailbox"] == MAILBOX
    assert filed["item"].startswith("reply.eml")
