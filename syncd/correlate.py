"""Correlation: the one rule that turns signals into links and candidate records.

Each signal names records (or, for the address, persons). The signals in
DECISION_TABLE are ranked strongest first:

    signal        names     links as        when a stronger signal is present
    code          record    tracking_code   linked (someone wrote or kept the code)
    quoted_code   record    tracking_code   candidate
    folder        record    folder          linked (a user chose the folder)
    thread        record    thread          candidate
    address       person    address         linked (it names who took part)

The rule: the strongest signal present is linked, and so is every signal
whose row is marked "linked" although a stronger one is present. Each target is
linked once, by the strongest signal that names it, and a record target
brings its organisation (matched_by record); a person brings its
organisation (matched_by address). A record that only outranked signals
name becomes a candidate of the correspondence, with that signal as its
reason, so nothing that two signals disagree on is dropped and nothing is
filed on a guess.

"code" is a known code in the subject or new text of the mail, and
"quoted_code" one found only in quoted history or a nested message (see
`syncd.quoting`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd.mail import MatchedBy


class Signal(enum.StrEnum):
    """A reason to file a mail against a CRM entity."""

    CODE = "code"
    QUOTED_CODE = "quoted_code"
    FOLDER = "folder"
    THREAD = "thread"
    ADDRESS = "address"


@dataclass(frozen=True)
class Row:
    """One row of the decision table."""

    signal: Signal
    #: The matched_by of a link that this signal makes.
    matched_by: MatchedBy
    #: The matched_by of the link to the target's organisation.
    organisation_matched_by: MatchedBy
    #: Whether the signal's targets are linked when a stronger signal is present.
    linked_when_outranked: bool


#: The signals, strongest first.
DECISION_TABLE: tuple[Row, ...] = (
    Row(Signal.CODE, MatchedBy.TRACKING_CODE, MatchedBy.RECORD, linked_when_outranked=True),
    Row(Signal.QUOTED_CODE, MatchedBy.TRACKING_CODE, MatchedBy.RECORD, linked_when_outranked=False),
    Row(Signal.FOLDER, MatchedBy.FOLDER, MatchedBy.RECORD, linked_when_outranked=True),
    Row(Signal.THREAD, MatchedBy.THREAD, MatchedBy.RECORD, linked_when_outranked=False),
    Row(Signal.ADDRESS, MatchedBy.ADDRESS, MatchedBy.ADDRESS, linked_when_outranked=True),
)


@dataclass(frozen=True)
class Link:
    """A link to make: `kind` is a record kind, "organisation" or "person"."""

    kind: str
    target_id: int
    matched_by: MatchedBy


@dataclass(frozen=True)
class Target:
    """A record, or for the address signal a person, with the organisation it belongs to."""

    kind: str
    id: int
    organisation_id: int


@dataclass(frozen=True)
class Evidence:
    """One signal naming one target."""

    signal: Signal
    target: Target


@dataclass(frozen=True)
class CandidateRecord:
    """A record that only an outranked signal named; `reason` is that signal."""

    kind: str
    record_id: int
    reason: Signal


@dataclass
class Decision:
    """The links to make and the candidate records to keep for one mail."""

    links: list[Link] = field(default_factory=list)
    candidates: list[CandidateRecord] = field(default_factory=list)


def decide(evidence: Iterable[Evidence]) -> Decision:
    """Apply the decision table to the signals found for one mail."""
    targets: dict[Signal, list[Target]] = {}
    for item in evidence:
        named = targets.setdefault(item.signal, [])
        if item.target not in named:
            named.append(item.target)

    present = [row for row in DECISION_TABLE if row.signal in targets]
    decision = Decision()
    linked: set[tuple[str, int]] = set()
    outranked: list[CandidateRecord] = []
    for row in present:
        links = row is present[0] or row.linked_when_outranked
        for target in targets[row.signal]:
            key = (target.kind, target.id)
            if key in linked:
                continue
            if links:
                linked.add(key)
                decision.links.append(Link(target.kind, target.id, row.matched_by))
                decision.links.append(Link("organisation", target.organisation_id, row.organisation_matched_by))
            else:
                outranked.append(CandidateRecord(target.kind, target.id, row.signal))

    # A record that a weaker signal offered may still be linked by a later
    # row that is linked when outranked (a folder after a quoted code).
    seen: set[tuple[str, int]] = set()
    for candidate in outranked:
        key = (candidate.kind, candidate.record_id)
        if key not in linked and key not in seen:
            seen.add(key)
            decision.candidates.append(candidate)
    decision.links = list(dict.fromkeys(decision.links))
    return decision
