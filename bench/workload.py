"""The store, the mails and the admin CLI that the end-to-end and memory benchmarks share.

The benchmarks drive syncd through its CLI, in this process, as the tests
do, against an SQLite store in a scratch directory loaded with
samples/crm.json. The mails are small generated replies that carry the
tracking code of one sample offer, each with its own Message-ID, so that
every one of them is filed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
for path in (REPO, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from click.testing import CliRunner  # noqa: E402
from factories import make_mail  # noqa: E402

from syncd.cli.main import cli  # noqa: E402

SAMPLES = REPO / "samples"

#: Tracking code of the offer "Tilbud – skrog og rigg" in samples/crm.json.
OFFER_CODE = "87gnV/VSKQga80stcfDvpw=="

INGRID = "ingrid.berg@salg.example"
SYNC_FOLDER = "CRM-arkiv"
EWS_PASSWORD = "Sv4rt-hemmelig-æøå"


def reply(index: int) -> bytes:
    """Return a small reply (about 400 bytes) that carries OFFER_CODE, with a Message-ID of its own."""
    return make_mail(
        subject=f"Sv: Tilbud på skrog – æøå nr. {index}",
        sender="Per Ukjent <per.ukjent@kunde.example>",
        to="Ingrid Berg <ingrid.berg@salg.example>",
        message_id=f"<svar-{index}@kunde.example>",
        text=f"Hei Ingrid,\n\nTakk for tilbudet. Vi kommer tilbake til det.\n\nTracking code: {OFFER_CODE}.\n",
    )


class Syncd:
    """Runs `syncd` commands in this process against one SQLite store, as an admin would.

    The first Syncd of a directory writes its settings file and creates the
    store. Another one with `prepare=False` uses them as they are.
    """

    def __init__(
        self, directory: Path, settings: str = "", env: dict[str, str] | None = None, *, prepare: bool = True
    ) -> None:
        config = directory / "settings.toml"
        if prepare:
            config.write_text('log_level = "WARNING"\n' + settings, encoding="utf-8")
        self.env = {
            "SYNCD_DATABASE_URL": f"sqlite:///{directory / 'syncd.db'}",
            "SYNCD_CONFIG": str(config),
            "SYNCD_SECRET_EWS_PASSWORD": EWS_PASSWORD,
            **(env or {}),
        }
        self.runner = CliRunner()
        if prepare:
            self("db", "upgrade")
            self("crm", "load", str(SAMPLES / "crm.json"))

    def __call__(self, *args: str) -> str:
        result = self.runner.invoke(cli, list(args), env=self.env, catch_exceptions=False)
        if result.exit_code != 0:
            raise RuntimeError(f"syncd {' '.join(args)} exited with {result.exit_code}: {result.output}")
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))
