"""The data model: samples, series identity, retention policy and input rules."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from metricstore.errors import ValidationError
from metricstore.times import timedelta_to_ms

# Prometheus's name rules. Label names starting with "__" are reserved for
# internal use, as in Prometheus.
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# A series identity: the metric name and its labels sorted by label name.
# Being a plain tuple, it hashes and orders the same in every process.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class MetricValue:
    """One sample of one series, as the public API takes and returns it."""

    name: str
    value: float
    timestamp: datetime
    labels: dict[str, str] = field(default_factory=dict)
    unit: str = ""

    @property
    def series_key(self) -> SeriesKey:
        return series_key(self.name, self.labels)


def is_utf8(text: str) -> bool:
    """Tell whether a string can be encoded as UTF-8 (it has no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def series_key(name: str, labels: dict[str, str]) -> SeriesKey:
    return (name, tuple(sorted(labels.items())))


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits; each is named in the error that enforces it."""

    max_labels_per_series: int = 32
    max_label_name_length: int = 128
    max_label_value_length: int = 2048
    max_metric_name_length: int = 256
    max_unit_length: int = 64
    # How far ahead of the server clock a sample may be.
    max_future_skew_ms: int = 10 * 60 * 1000
    # How far behind the newest sample of its series a sample may arrive.
    out_of_order_window_ms: int = 10 * 60 * 1000
    max_series: int = 1_000_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_frame_bytes: int = 16 * 1024 * 1024
    max_samples_per_batch: int = 1_000_000


DEFAULT_LIMITS = Limits()


def validate_series(
    name: object, labels: object, unit: object = "", limits: Limits = DEFAULT_LIMITS
) -> tuple[str, dict[str, str], str]:
    """Check a series' name, labels and unit; return them typed.

    Raises ValidationError naming the first field that breaks a rule.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("name", name, "a metric name must be a non-empty string")
    if len(name) > limits.max_metric_name_length:
        raise ValidationError(
            "name", name, f"longer than max_metric_name_length={limits.max_metric_name_length}"
        )
    if not METRIC_NAME_RE.fullmatch(name):
        raise ValidationError("name", name, "a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*")

    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise ValidationError("labels", labels, "labels must be an object of strings")
    if len(labels) > limits.max_labels_per_series:
        raise ValidationError(
            "labels",
            f"{len(labels)} labels",
            f"more than max_labels_per_series={limits.max_labels_per_series}",
        )
    for label_name, label_value in labels.items():
        _validate_label(label_name, label_value, limits)

    if unit is None:
        unit = ""
    if not isinstance(unit, str) or not is_utf8(unit):
        raise ValidationError("unit", unit, "a unit must be a valid UTF-8 string")
    if len(unit) > limits.max_unit_length:
        raise ValidationError("unit", unit, f"longer than max_unit_length={limits.max_unit_length}")
    return name, labels, unit


def _validate_label(label_name: object, label_value: object, limits: Limits) -> None:
    if not isinstance(label_name, str) or not LABEL_NAME_RE.fullmatch(label_name):
        raise ValidationError(
            "labels", label_name, "a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
        )
    if label_name.startswith("__"):
        raise ValidationError("labels", label_name, "label names starting with __ are reserved")
    if len(label_name) > limits.max_label_name_length:
        raise ValidationError(
            "labels",
            label_name,
            f"label name longer than max_label_name_length={limits.max_label_name_length}",
        )
    if not isinstance(label_value, str) or not is_utf8(label_value):
        raise ValidationError(
            f"labels.{label_name}", label_value, "a label value must be a valid UTF-8 string"
        )
    if not label_value:
        # Prometheus treats an empty label value as an absent label; storing
        # it would create two names for one series.
        raise ValidationError(
            f"labels.{label_name}", label_value, "a label value must not be empty; omit the label"
        )
    if len(label_value) > limits.max_label_value_length:
        raise ValidationError(
            f"labels.{label_name}",
            label_value,
            f"longer than max_label_value_length={limits.max_label_value_length}",
        )


def parse_value(value: object, field_name: str = "value") -> float:
    """Read a sample value: a number, or one of the strings "NaN", "+Inf", "-Inf"."""
    if isinstance(value, bool):
        raise ValidationError(field_name, value, "a value must be a number, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        special = _SPECIAL_VALUES.get(value)
        if special is not None:
            return special
    raise ValidationError(field_name, value, 'a value must be a number or "NaN", "+Inf", "-Inf"')


_SPECIAL_VALUES = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}

DEFAULT_DOWNSAMPLE_AFTER = timedelta(hours=2)


@dataclass(slots=True)
class RetentionPolicy:
    """How long samples are kept, and how they are thinned as they age.

    Samples older than ``retention_period`` are dropped. When
    ``downsampling_interval`` is set, raw samples older than
    ``downsample_after`` (default two hours) are replaced by one rollup per
    series and interval that keeps min, max, sum, count and last, so every
    aggregation stays exact over rolled-up data. ``max_points_per_series``
    caps the raw samples kept per series, dropping the oldest first.
    """

    name: str
    retention_period: timedelta
    downsampling_interval: timedelta | None = None
    max_points_per_series: int | None = None
    downsample_after: timedelta = DEFAULT_DOWNSAMPLE_AFTER

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("name", self.name, "a policy name must be a non-empty string")
        _check_positive_timedelta("retention_period", self.retention_period)
        if self.downsampling_interval is not None:
            _check_positive_timedelta("downsampling_interval", self.downsampling_interval)
            if self.downsampling_interval >= self.retention_period:
                raise ValidationError(
                    "downsampling_interval",
                    self.downsampling_interval,
                    "must be shorter than retention_period",
                )
        if not isinstance(self.downsample_after, timedelta) or self.downsample_after < timedelta(0):
            raise ValidationError(
                "downsample_after", self.downsample_after, "must be a timedelta of zero or more"
            )
        if self.max_points_per_series is not None and (
            isinstance(self.max_points_per_series, bool)
            or not isinstance(self.max_points_per_series, int)
            or self.max_points_per_series < 1
        ):
            raise ValidationError(
                "max_points_per_series",
                self.max_points_per_series,
                "must be a positive integer or None",
            )

    @property
    def retention_ms(self) -> int:
        return timedelta_to_ms(self.retention_period)

    @property
    def downsampling_interval_ms(self) -> int | None:
        if self.downsampling_interval is None:
            return None
        return timedelta_to_ms(self.downsampling_interval)

    @property
    def downsample_after_ms(self) -> int:
        return timedelta_to_ms(self.downsample_after)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON- and msgpack-safe dict; durations are in seconds."""
        interval = self.downsampling_interval
        return {
            "name": self.name,
            "retention_period": self.retention_period.total_seconds(),
            "downsampling_interval": None if interval is None else interval.total_seconds(),
            "max_points_per_series": self.max_points_per_series,
            "downsample_after": self.downsample_after.total_seconds(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetentionPolicy:
        """Build a policy from ``to_dict()`` output; unknown keys are rejected."""
        unknown = set(data) - _POLICY_KEYS
        if unknown:
            raise ValidationError(
                "policy", sorted(unknown), f"unknown keys; expected some of {sorted(_POLICY_KEYS)}"
            )
        if "name" not in data or "retention_period" not in data:
            raise ValidationError("policy", sorted(data), "name and retention_period are required")
        interval = data.get("downsampling_interval")
        after = data.get("downsample_after")
        return cls(
            name=data["name"],
            retention_period=_seconds_field("retention_period", data["retention_period"]),
            downsampling_interval=(
                None if interval is None else _seconds_field("downsampling_interval", interval)
            ),
            max_points_per_series=data.get("max_points_per_series"),
            downsample_after=(
                DEFAULT_DOWNSAMPLE_AFTER
                if after is None
                else _seconds_field("downsample_after", after)
            ),
        )


_POLICY_KEYS = {
    "name",
    "retention_period",
    "downsampling_interval",
    "max_points_per_series",
    "downsample_after",
}


def _seconds_field(name: str, value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(name, value, "must be a finite number of seconds")
    return timedelta(seconds=value)


def _check_positive_timedelta(name: str, value: object) -> None:
    if not isinstance(value, timedelta):
        raise ValidationError(name, value, "must be a timedelta")
    if value <= timedelta(0):
        raise ValidationError(name, value, "must be positive")
    if value % timedelta(milliseconds=1):
        raise ValidationError(name, value, "must be a whole number of milliseconds")
