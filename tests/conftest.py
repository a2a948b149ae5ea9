"""Shared fixtures: the CRM store on SQLite and on PostgreSQL, a frozen time zone."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from crmstore import db
from crmstore.models import Base
from syncd.logsetup import CHATTY_LIBRARIES

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLES = REPO / "samples"

#: The PostgreSQL server the tests use; a scratch database is created on it
#: for each test run and dropped afterwards.
POSTGRES_URL = os.environ.get(
    "SYNCD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True, scope="session")
def _oslo_time_zone() -> Iterator[None]:
    # A non-UTC zone makes every naive-datetime mistake show up as a wrong hour.
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Oslo"
    time.tzset()
    yield
    if previous is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = previous
    time.tzset()


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    # The CLI configures logging when it runs in-process; later tests must
    # see the levels they set themselves.
    names = ["", "syncd", "crmstore", *CHATTY_LIBRARIES]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("store") / "template.db"
    engine = db.create_store_engine(f"sqlite:///{path}", create=True)
    db.upgrade(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A scratch PostgreSQL database, migrated once for the whole run."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means no server to test on
        admin.dispose()
        pytest.skip(f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string()} is not reachable: {exc.__class__.__name__}")

    name = f"syncd_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.create_store_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield url

    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, migrated store: one run on SQLite, one on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "syncd.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return

    url = request.getfixturevalue("postgres_database")
    yield url
    engine = create_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = db.create_store_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


def corpus_or_skip() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"real-world mail corpus not found at {CORPUS}; these tests need it")
    return CORPUS
