"""Engines, sessions and schema migrations for the CRM store."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from crmstore.errors import NotFoundError

log = logging.getLogger("crmstore")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def create_store_engine(url: str, *, create: bool = False, **options: Any) -> Engine:
    """Create an engine for `url`; SQLite files get WAL mode and enforced foreign keys.

    An SQLite file that does not exist yet is created only with `create`
    (for `syncd db upgrade`); otherwise NotFoundError says how to create it,
    so that a mistyped path does not leave an empty database behind.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise NotFoundError(
                    f"the database file {str(path)!r} does not exist: check the database URL "
                    "or data_dir, or create it with `syncd db upgrade`"
                )

        # SQLite's default of failing at once on a locked file would turn a
        # second CLI command during a sync into an error; wait instead.
        options.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine

    options.setdefault("pool_pre_ping", True)
    return create_engine(url, **options)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def describe_error(exc: BaseException) -> str:
    """Return the driver's first line of a database error, e.g. "OperationalError: connection failed: ...".

    SQLAlchemy's own message goes on with the SQL statement and its
    parameters, which contain mail text and addresses. Only the first line
    goes into logs and stored error details. Other exceptions are described
    the same way.
    """
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0]}" if lines else type(original).__name__


def masked_url(url: str) -> str:
    """Return `url` with any password replaced by ***, for logs and messages.

    libpq also takes the password as a query parameter, which SQLAlchemy
    does not hide, so that one is masked here.
    """
    rendered = make_url(url).render_as_string(hide_password=True)
    return _QUERY_PASSWORD.sub(r"\1***", rendered)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = None
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the schema migrations up to `revision`."""
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo the schema migrations after `revision`; the data in what they added is lost."""
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    return script.get_current_head()


def is_current(engine: Engine) -> bool:
    """Return whether the database schema is at the newest migration."""
    return current_revision(engine) == head_revision()
