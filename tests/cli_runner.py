"""Runs the real `syncd` command in-process, as an admin would, for the CLI tests."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from syncd.cli.main import cli


class SyncdCli:
    """`syncd` with a fixed environment; each call asserts the exit code it expects."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)
