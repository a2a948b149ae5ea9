"""What every CLI command shares: settings, the store, and how errors are shown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crmstore import db
from syncd.errors import ConfigError
from syncd.settings import Settings, load_settings


class App:
    """Lazily built settings and store, shared by the commands of one invocation."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    @cached_property
    def engine(self) -> Engine:
        return db.create_store_engine(self.settings.resolved_database_url())

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory for a store whose schema is current."""
        if not db.is_current(self.engine):
            url = db.masked_url(self.settings.resolved_database_url())
            raise ConfigError(f"the database {url} is not initialised or is outdated: run `syncd db upgrade`")
        return db.session_factory(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session


pass_app = click.make_pass_decorator(App)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def warn(message: str) -> None:
    click.echo(message, file=sys.stderr)
