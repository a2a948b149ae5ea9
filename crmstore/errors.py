"""Exceptions that the CRM store raises on bad input."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's errors; the message names the bad value."""


class NotFoundError(StoreError):
    """A REF, id or address names nothing in the store."""


class InvalidInputError(StoreError):
    """A value is malformed or conflicts with what the store holds."""
