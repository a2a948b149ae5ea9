"""References to CRM entities in the form KIND:ID, as the CLI and links use them."""

from __future__ import annotations

from dataclasses import dataclass

from crmstore.models import RECORD_KINDS

ENTITY_KINDS = (*RECORD_KINDS, "organisation", "person")


@dataclass(frozen=True)
class Ref:
    kind: str
    id: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_record(self) -> bool:
        return self.kind in RECORD_KINDS


def parse_ref(text: str) -> Ref:
    """Parse "offer:12" into Ref("offer", 12); raise ValueError naming the bad part."""
    kind, separator, number = text.strip().partition(":")
    kind = kind.lower()
    if not separator or kind not in ENTITY_KINDS:
        raise ValueError(
            f"invalid REF {text!r}: use KIND:ID with KIND one of {', '.join(ENTITY_KINDS)}"
        )
    if not number.isdigit():
        raise ValueError(f"invalid REF {text!r}: the ID after {kind}: must be a whole number")
    return Ref(kind, int(number))
