"""Import of mail files named on the command line: .eml, .msg and .mbox.

Imported items are recorded like mailbox items, under the mailbox name
"import" (or "import:USER" when a CRM user is named), so importing a file
twice records it once.
"""

from __future__ import annotations

import logging
import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from syncd.backends.base import Folder, Item, content_digest
from syncd.pipeline import Pipeline
from syncd.record import Source
from syncd.sync import Counts

log = logging.getLogger("syncd.import")

FORMATS = {".eml": "eml", ".msg": "msg", ".mbox": "mbox"}


@dataclass(frozen=True)
class ImportProblem:
    """A path that could not be imported, and why."""

    path: Path
    reason: str


def import_paths(
    pipeline: Pipeline, paths: list[Path], by: str | None = None
) -> tuple[Counts, list[ImportProblem]]:
    """Record every mail in `paths` (files, or directories searched recursively)."""
    counts = Counts()
    problems: list[ImportProblem] = []
    mailbox_name = f"import:{by}" if by else "import"

    for path in _expand(paths, problems):
        try:
            found = 0
            for item in _items(path):
                source = Source(mailbox_name, item.folder.key, item.folder.name, item.item_id)
                counts.add(pipeline.process(item, source).outcome)
                found += 1
            if found == 0 and path.stat().st_size > 0:
                # mailbox.mbox finds no message in a file without "From " lines.
                reason = "no message found: an mbox file starts each message with a 'From ' line"
                problems.append(ImportProblem(path, reason))
        except (OSError, mailbox.Error, UnicodeError) as exc:
            # Items of the file recorded before the error stay recorded;
            # importing the file again after a fix skips them.
            log.warning("import of %s stopped: %s", path, exc)
            problems.append(ImportProblem(path, f"cannot read: {exc}"))
    return counts, problems


def _expand(paths: list[Path], problems: list[ImportProblem]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in FORMATS and p.is_file())
        elif not path.exists():
            problems.append(ImportProblem(path, "no such file or directory"))
        elif path.suffix.lower() not in FORMATS:
            problems.append(ImportProblem(path, "not an .eml, .msg or .mbox file"))
        else:
            yield path


def _items(path: Path) -> Iterator[Item]:
    folder = Folder(key=str(path.parent.resolve()), name=str(path.parent))
    kind = FORMATS[path.suffix.lower()]
    if kind != "mbox":
        raw = path.read_bytes()
        yield Item(folder, f"{path.name}@{content_digest(raw)}", raw=raw, format=kind)
        return

    box = mailbox.mbox(path, create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            raw = box.get_bytes(key)
            yield Item(folder, f"{path.name}#{index}@{content_digest(raw)}", raw=raw, format="eml")
    finally:
        box.close()
