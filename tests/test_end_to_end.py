"""The main job on the shipped sample mails, through the real CLI, on both databases.

samples/expected.json states for each sample mail how it must be filed;
these tests enrol a drop directory with the samples, run passes, and
compare what the store holds with that table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from syncd.cli.main import cli

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))


class Syncd:
    """Runs `syncd` commands against one store, as an admin would."""

    def __init__(self, store_url: str, tmp_path: Path) -> None:
        self.runner = CliRunner()
        config = tmp_path / "settings.toml"
        config.write_text("[sync]\nmax_attempts = 1\n")
        self.env = {"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": str(config)}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def syncd(store_url: str, tmp_path: Path) -> Syncd:
    run = Syncd(store_url, tmp_path)
    run("crm", "load", str(SAMPLES / "crm.json"))
    return run


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    directory = tmp_path / "drop"
    directory.mkdir()
    for path in sorted((SAMPLES / "mail").glob("*.eml")):
        shutil.copy(path, directory / path.name)
    return directory


def test_samples_filed_as_expected(syncd: Syncd, drop: Path) -> None:
    syncd("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))

    counts = syncd.json("sync", "--once")
    filed = [name for name, e in EXPECTED.items() if e["outcome"] == "filed"]
    unmatched = [name for name, e in EXPECTED.items() if e["outcome"] == "unmatched"]
    duplicates = [name for name, e in EXPECTED.items() if e["outcome"] == "duplicate"]
    assert counts == {
        "seen": len(EXPECTED),
        "filed": len(filed),
        "unmatched": len(unmatched),
        "failed": 0,
        "duplicates": len(duplicates),
    }

    refs = _refs_by_name(syncd)
    correspondence = syncd.json("correspondence", "list")
    for name in filed:
        expected = EXPECTED[name]
        matches = [
            c for c in correspondence if c["subject"] == expected["subject"] and c["from"] == expected["from"]
        ]
        assert len(matches) == 1, f"{name}: expected one correspondence, found {len(matches)}"
        found = matches[0]
        assert found["direction"] == expected["direction"], name
        want = {(refs[(kind, title)], matched_by) for kind, title, matched_by in expected["links"]}
        got = {(link["ref"], link["matched_by"]) for link in found["links"]}
        assert got == want, name


def test_unmatched_samples_queued_with_reason(syncd: Syncd, drop: Path) -> None:
    syncd("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    syncd("sync", "--once")

    queue = syncd.json("unmatched", "list")
    reasons = sorted(entry["reason"] for entry in queue)
    expected = sorted(e["reason"] for e in EXPECTED.values() if e["outcome"] == "unmatched")
    assert reasons == expected


def test_duplicate_gets_second_source(syncd: Syncd, drop: Path) -> None:
    syncd("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    syncd("sync", "--once")

    original = EXPECTED["01-reply-quoted-code-qp.eml"]
    correspondence = syncd.json("correspondence", "list")
    match = next(c for c in correspondence if c["subject"] == original["subject"])
    items = sorted(source["item"].partition("@")[0] for source in match["sources"])
    assert items == ["01-reply-quoted-code-qp.eml", "11-duplicate-of-01.eml"]
    [status] = syncd.json("status")
    assert (status["filed"], status["duplicates"]) == (len(correspondence), 1)


def test_second_pass_files_nothing_twice(syncd: Syncd, drop: Path) -> None:
    syncd("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop), "--post-action", "keep")
    first = syncd.json("sync", "--once")
    before = syncd.json("correspondence", "list")

    second = syncd.json("sync", "--once")
    after = syncd.json("correspondence", "list")
    assert first["filed"] > 0
    assert second == {"seen": first["seen"], "filed": 0, "unmatched": 0, "failed": 0, "duplicates": first["seen"]}
    assert len(after) == len(before)
    assert len(syncd.json("unmatched", "list")) == first["unmatched"]


def test_moved_files_leave_drop_directory(syncd: Syncd, drop: Path) -> None:
    syncd("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    syncd("sync", "--once")

    assert sorted(p.name for p in drop.glob("*.eml")) == []
    assert len(list((drop / "processed").glob("*.eml"))) == len(EXPECTED)
    second = syncd.json("sync", "--once")
    assert second["seen"] == 0


def test_import_counts_add_up(syncd: Syncd, drop: Path) -> None:
    counts = syncd.json("import", str(drop))
    assert counts["seen"] == len(EXPECTED)
    assert counts["seen"] == counts["filed"] + counts["unmatched"] + counts["failed"] + counts["duplicates"]

    again = syncd.json("import", str(drop))
    assert again["duplicates"] == len(EXPECTED)


def _refs_by_name(syncd: Syncd) -> dict[tuple[str, str], str]:
    """Map (kind, title or name) from expected.json to the REF the store gave it."""
    crm = json.loads((SAMPLES / "crm.json").read_text(encoding="utf-8"))
    refs: dict[tuple[str, str], str] = {}
    for number, organisation in enumerate(crm["organisations"], start=1):
        refs[("organisation", organisation["name"])] = f"organisation:{number}"
    for number, person in enumerate(crm["persons"], start=1):
        refs[("person", person["name"])] = f"person:{number}"
    for number, record in enumerate(crm["records"], start=1):
        refs[(record["kind"], record["title"])] = f"{record['kind']}:{number}"
    return refs


def test_forwarded_date_read_in_local_zone(syncd: Syncd, drop: Path) -> None:
    forward = EXPECTED["04-outlook-inline-forward.eml"]
    syncd.json("import", str(drop / "04-outlook-inline-forward.eml"))

    [filed] = syncd.json("correspondence", "list")

    # The block says "Sendt: onsdag 15. januar 2025 16:47", Oslo time in winter.
    assert filed["subject"] == forward["subject"]
    assert filed["date"] == "2025-01-15T15:47:00+00:00"
