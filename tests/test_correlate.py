"""The decision table of correlation, row by row, and the rule that applies it."""

from __future__ import annotations

import pytest

from syncd.correlate import DECISION_TABLE, CandidateRecord, Evidence, Link, Row, Signal, Target, decide
from syncd.mail import MatchedBy

#: Records of two organisations, and a person, as the store would give them.
SKROG = Target("offer", 1, 10)
SERVICE = Target("activity", 2, 10)
STAALBJAELKER = Target("delivery", 3, 20)
KARI = Target("person", 7, 10)


def _target_for(row: Row, index: int) -> Target:
    """Return a target of the kind the row's signal names, a different one per index."""
    if row.signal is Signal.ADDRESS:
        return Target("person", 100 + index, 200 + index)
    return Target("offer", 100 + index, 200 + index)


def test_table_ranks_signals_strongest_first() -> None:
    assert [row.signal for row in DECISION_TABLE] == [
        Signal.CODE, Signal.QUOTED_CODE, Signal.FOLDER, Signal.THREAD, Signal.ADDRESS,
    ]


@pytest.mark.parametrize("row", DECISION_TABLE, ids=lambda row: row.signal.value)
def test_row_alone_links_target(row: Row) -> None:
    target = _target_for(row, 1)

    decision = decide([Evidence(row.signal, target)])

    assert decision.links == [
        Link(target.kind, target.id, row.matched_by),
        Link("organisation", target.organisation_id, row.organisation_matched_by),
    ]
    assert decision.candidates == []


@pytest.mark.parametrize(
    "index", range(1, len(DECISION_TABLE)), ids=lambda index: DECISION_TABLE[index].signal.value
)
def test_row_outranked_by_row_above(index: int) -> None:
    row, stronger = DECISION_TABLE[index], DECISION_TABLE[index - 1]
    mine, theirs = _target_for(row, 1), _target_for(stronger, 2)

    decision = decide([Evidence(row.signal, mine), Evidence(stronger.signal, theirs)])

    assert Link(theirs.kind, theirs.id, stronger.matched_by) in decision.links
    if row.linked_when_outranked:
        assert Link(mine.kind, mine.id, row.matched_by) in decision.links
        assert decision.candidates == []
    else:
        assert all((link.kind, link.target_id) != (mine.kind, mine.id) for link in decision.links)
        assert decision.candidates == [CandidateRecord(mine.kind, mine.id, row.signal)]


def test_code_outranks_quoted_code() -> None:
    decision = decide([Evidence(Signal.QUOTED_CODE, SKROG), Evidence(Signal.CODE, STAALBJAELKER)])

    assert decision.links == [
        Link("delivery", 3, MatchedBy.TRACKING_CODE),
        Link("organisation", 20, MatchedBy.RECORD),
    ]
    assert decision.candidates == [CandidateRecord("offer", 1, Signal.QUOTED_CODE)]


def test_code_and_folder_both_linked() -> None:
    decision = decide([Evidence(Signal.FOLDER, SKROG), Evidence(Signal.CODE, STAALBJAELKER)])

    assert Link("offer", 1, MatchedBy.FOLDER) in decision.links
    assert Link("delivery", 3, MatchedBy.TRACKING_CODE) in decision.links
    assert decision.candidates == []


def test_quoted_code_and_folder_both_linked() -> None:
    decision = decide([Evidence(Signal.FOLDER, SKROG), Evidence(Signal.QUOTED_CODE, STAALBJAELKER)])

    assert Link("offer", 1, MatchedBy.FOLDER) in decision.links
    assert Link("delivery", 3, MatchedBy.TRACKING_CODE) in decision.links
    assert decision.candidates == []


def test_folder_outranks_thread() -> None:
    decision = decide([Evidence(Signal.THREAD, STAALBJAELKER), Evidence(Signal.FOLDER, SKROG)])

    assert decision.links == [Link("offer", 1, MatchedBy.FOLDER), Link("organisation", 10, MatchedBy.RECORD)]
    assert decision.candidates == [CandidateRecord("delivery", 3, Signal.THREAD)]


def test_thread_and_address_both_linked() -> None:
    decision = decide([Evidence(Signal.ADDRESS, KARI), Evidence(Signal.THREAD, STAALBJAELKER)])

    assert decision.links == [
        Link("delivery", 3, MatchedBy.THREAD),
        Link("organisation", 20, MatchedBy.RECORD),
        Link("person", 7, MatchedBy.ADDRESS),
        Link("organisation", 10, MatchedBy.ADDRESS),
    ]


def test_record_linked_once_by_strongest_signal() -> None:
    decision = decide(
        [Evidence(Signal.THREAD, SKROG), Evidence(Signal.FOLDER, SKROG), Evidence(Signal.QUOTED_CODE, SKROG)]
    )

    assert decision.links == [
        Link("offer", 1, MatchedBy.TRACKING_CODE),
        Link("organisation", 10, MatchedBy.RECORD),
    ]
    assert decision.candidates == []


def test_strongest_signal_links_all_its_records() -> None:
    decision = decide([Evidence(Signal.THREAD, SKROG), Evidence(Signal.THREAD, SERVICE)])

    assert Link("offer", 1, MatchedBy.THREAD) in decision.links
    assert Link("activity", 2, MatchedBy.THREAD) in decision.links
    assert decision.candidates == []


def test_candidate_dropped_when_later_row_links_it() -> None:
    decision = decide(
        [
            Evidence(Signal.CODE, STAALBJAELKER),
            Evidence(Signal.QUOTED_CODE, SKROG),
            Evidence(Signal.FOLDER, SKROG),
        ]
    )

    assert Link("offer", 1, MatchedBy.FOLDER) in decision.links
    assert decision.candidates == []


def test_one_candidate_per_record() -> None:
    decision = decide(
        [
            Evidence(Signal.CODE, STAALBJAELKER),
            Evidence(Signal.QUOTED_CODE, SKROG),
            Evidence(Signal.THREAD, SKROG),
        ]
    )

    assert decision.candidates == [CandidateRecord("offer", 1, Signal.QUOTED_CODE)]


def test_no_signal_links_nothing() -> None:
    decision = decide([])

    assert decision.links == []
    assert decision.candidates == []
