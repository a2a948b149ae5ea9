"""Category writes shared by the EWS and Graph backends: plans and rounds."""

from __future__ import annotations

from syncd.backends.base import FeedbackRequest
from syncd.backends.tagging import (
    CATEGORY_WRITE_ROUNDS,
    CategoryWrite,
    Known,
    plan_writes,
    wanted_categories,
    write_in_rounds,
)
from syncd.mail import Outcome

NAMES = {Outcome.FILED: "Arkivert i CRM", Outcome.UNMATCHED: "Ikke arkivert"}


def test_wanted_names_follow_outcomes_without_repeats() -> None:
    by_item = {
        "a": [FeedbackRequest("f", "a", Outcome.FILED), FeedbackRequest("f", "a", Outcome.FILED)],
        "b": [FeedbackRequest("f", "b", Outcome.FAILED)],
    }

    assert wanted_categories(by_item, NAMES) == {"a": ["Arkivert i CRM"], "b": []}


def test_plan_appends_only_missing_names() -> None:
    known: Known = {"a": ("v1", ["Rød"]), "b": ("v2", ["Arkivert i CRM"])}
    tagged: list[str] = []

    writes = plan_writes(known, {"a": ["Arkivert i CRM"], "b": ["Arkivert i CRM"]}, tagged)

    assert writes == [CategoryWrite("a", "v1", ["Rød", "Arkivert i CRM"])]
    assert tagged == ["b"]


def test_cached_categories_serve_the_first_round_only() -> None:
    cached: Known = {"a": ("v1", []), "b": ("v1", [])}
    reads: list[list[str]] = []
    writes: list[Known] = []

    def read(item_ids: list[str]) -> Known:
        reads.append(item_ids)
        return {item_id: ("v2", ["Blå"]) for item_id in item_ids}

    def write(known: Known) -> list[str]:
        writes.append(known)
        # "a" was changed by the user every time.
        return ["a"]

    left = write_in_rounds(["a", "b"], cached, read, write)

    assert left == ["a"]
    assert reads == [[]] + [["a"]] * (CATEGORY_WRITE_ROUNDS - 1)
    assert writes[0] == {"a": ("v1", []), "b": ("v1", [])}
    assert writes[1] == {"a": ("v2", ["Blå"])}
    assert cached == {}
