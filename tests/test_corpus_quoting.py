"""The split between new text and quoted history on published replies and forwards of many mail clients.

The files come from the real-world corpus beside the repository. Each is a
body with quoted history. A tracking code put above it must count as new
text, and one put at the end of the history must not.
"""

from __future__ import annotations

import csv

import pytest
from conftest import CORPUS, corpus_or_skip

from syncd.mail import ParsedMail
from syncd.quoting import codes_in_new_text, split_history

NEW_CODE = "BCM+S8WGe7iC/he3CJrbEQ=="
OLD_CODE = "87gnV/VSKQga80stcfDvpw=="

#: Tags of the manifest that mark a body with quoted history.
HISTORY_TAGS = {"reply-quoted", "nordic-quote-header", "quoted-header-block"}

#: Languages whose reply headers syncd does not know; their split is not checked.
UNSUPPORTED = ("_pl_",)


def _bodies() -> list[str]:
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8") as manifest:
        rows = list(csv.DictReader(manifest, delimiter="\t"))
    return sorted(
        row["path"]
        for row in rows
        if row["format"] == "body-text"
        and HISTORY_TAGS & set(row["tags"].split(","))
        and not row["path"].endswith("_subject.txt")
        and not any(marker in row["path"] for marker in UNSUPPORTED)
    )


@pytest.mark.parametrize("path", _bodies() or ["(corpus missing)"])
def test_corpus_history_found(path: str) -> None:
    text = (corpus_or_skip() / path).read_text(encoding="utf-8-sig", errors="replace")

    _, history = split_history(text)
    mail = ParsedMail(text=f"Sporingskode: {NEW_CODE}\n{text}\n\nSporingskode: {OLD_CODE}\n")

    assert history, path
    assert codes_in_new_text(mail) == {NEW_CODE}, path
