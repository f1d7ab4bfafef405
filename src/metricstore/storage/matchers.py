"""Label matchers with Prometheus semantics: =, !=, =~ and !~."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import re2

from metricstore.errors import ValidationError
from metricstore.models import LABEL_NAME_RE, SeriesKey, is_utf8

MATCH_OPS = ("=", "!=", "=~", "!~")
# Maximum length of a matcher's regex; longer patterns are more likely a
# mistake than a query, and cost compile time on every subscribe.
MAX_REGEX_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label condition, as in a PromQL selector.

    As in Prometheus, an absent label reads as the empty string, so
    ``container!="web"`` matches series without a container label, and
    regexes are fully anchored RE2 expressions: matching takes linear time,
    so no pattern can stall the server on a long label value.
    """

    label: str
    op: str
    value: str
    _regex: re2._Regexp | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, data: object, field_name: str = "matchers") -> Matcher:
        """Build a matcher from ``{"label", "op", "value"}``; raises ValidationError."""
        if not isinstance(data, dict):
            raise ValidationError(field_name, data, 'a matcher must be {"label", "op", "value"}')
        unknown = set(data) - {"label", "op", "value"}
        if unknown:
            raise ValidationError(field_name, sorted(map(str, unknown))[0], "unknown matcher field")
        label, op, value = data.get("label"), data.get("op", "="), data.get("value")
        if not isinstance(label, str) or not LABEL_NAME_RE.fullmatch(label):
            raise ValidationError(
                f"{field_name}.label", label, "a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if label.startswith("__"):
            raise ValidationError(
                f"{field_name}.label", label, "label names starting with __ are reserved"
            )
        if op not in MATCH_OPS:
            raise ValidationError(f"{field_name}.op", op, f"must be one of {', '.join(MATCH_OPS)}")
        if not isinstance(value, str) or not is_utf8(value):
            raise ValidationError(
                f"{field_name}.value", value, "a matcher value must be a valid UTF-8 string"
            )
        regex = None
        if op in ("=~", "!~"):
            if len(value) > MAX_REGEX_LENGTH:
                raise ValidationError(
                    f"{field_name}.value", value, f"regex longer than {MAX_REGEX_LENGTH} characters"
                )
            try:
                regex = re2.compile(value)
            except re2.error as error:
                raise ValidationError(
                    f"{field_name}.value", value, f"invalid regex: {_message(error)}"
                ) from None
        return cls(label, op, value, regex)

    def matches_value(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value) is not None
        return found if self.op == "=~" else not found

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "op": self.op, "value": self.value}


def _message(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def matches_key(key: SeriesKey, matchers: Iterable[Matcher]) -> bool:
    """Tell whether a series' labels satisfy every matcher."""
    labels = dict(key[1])
    return all(matcher.matches_value(labels.get(matcher.label, "")) for matcher in matchers)


def equality_matchers(labels: dict[str, str] | None) -> list[Matcher]:
    return [Matcher(label, "=", value) for label, value in (labels or {}).items()]
