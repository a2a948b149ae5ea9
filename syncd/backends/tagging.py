"""Appending syncd's categories to mailbox items without overwriting the user's.

EWS and Graph write categories the same way: append the missing names to
the categories last read, and make the write conditional on the version of
that read (an EWS change key, a Graph entity tag). When another client
changed the item in between, the server rejects the write, and the item is
read and written again, for a bounded number of rounds. The protocols differ
only in how they read and write, which each backend passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from syncd.backends.base import FeedbackRequest
from syncd.mail import Outcome

#: Rounds of reading and writing an item's categories. A round follows another
#: when another client changed the item in between. After the last round the
#: item waits for a later pass.
CATEGORY_WRITE_ROUNDS = 2

#: Item id → (version of the read, or None when unknown; categories read).
Known = dict[str, tuple[str | None, list[str]]]


@dataclass(frozen=True)
class CategoryWrite:
    item_id: str
    version: str | None
    categories: list[str]


def wanted_categories(
    by_item: Mapping[str, list[FeedbackRequest]], names: Mapping[Outcome, str]
) -> dict[str, list[str]]:
    """Return item id → the category names its outcomes call for, in order, without repeats."""
    return {
        item_id: list(dict.fromkeys(names[request.outcome] for request in requests if request.outcome in names))
        for item_id, requests in by_item.items()
    }


def plan_writes(known: Known, wanted: Mapping[str, list[str]], tagged: list[str]) -> list[CategoryWrite]:
    """Return the writes that append missing names; items that lack none go to `tagged`."""
    writes = []
    for item_id, (version, existing) in known.items():
        missing = [name for name in wanted[item_id] if name not in existing]
        if missing:
            writes.append(CategoryWrite(item_id, version, existing + missing))
        else:
            tagged.append(item_id)
    return writes


def write_in_rounds(
    pending: list[str],
    cached: dict[str, tuple[str | None, list[str]]],
    read: Callable[[list[str]], Known],
    write: Callable[[Known], list[str]],
) -> list[str]:
    """Read and write the categories of `pending` items; return those still changed by others after the last round.

    `cached` holds categories read with the items' content; each is used
    once and removed, so a second round reads afresh. `write` returns the
    ids whose write the server rejected because the item had changed.
    """
    for _ in range(CATEGORY_WRITE_ROUNDS):
        if not pending:
            break
        known = {item_id: cached.pop(item_id) for item_id in pending if item_id in cached}
        known.update(read([item_id for item_id in pending if item_id not in known]))
        pending = write(known)
    return pending
