"""Exceptions shared by every layer."""

from __future__ import annotations


class MetricstoreError(Exception):
    """Base class of this package's errors."""


class ValidationError(MetricstoreError, ValueError):
    """Input that breaks a rule: names the field, the value and the rule."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {field} {_shorten(value)}: {rule}")


class StorageBusyError(MetricstoreError):
    """The pipeline could not take a batch in time; the client should retry."""


class StorageUnavailableError(MetricstoreError):
    """Writing to disk failed (full, read-only, I/O error); nothing was stored."""


class DataDirectoryError(MetricstoreError):
    """A data directory that cannot be used as it is; the message says why."""


class StorageClosedError(MetricstoreError):
    """The pipeline has shut down and takes no more requests."""


def _shorten(value: object, limit: int = 80) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
