from __future__ import annotations

from datetime import timedelta

import pytest

from metricstore import RetentionPolicy
from metricstore.errors import ValidationError
from metricstore.models import DEFAULT_LIMITS, Limits, parse_value, validate_series


def test_validate_series_accepts_valid() -> None:
    name, labels, unit = validate_series("node_cpu:rate5m", {"cpu": "0", "_x": "y"}, "seconds")
    assert name == "node_cpu:rate5m"
    assert labels == {"cpu": "0", "_x": "y"}
    assert unit == "seconds"


@pytest.mark.parametrize(
    ("name", "labels", "field", "fragment"),
    [
        ("", {}, "name", "non-empty"),
        ("1cpu", {}, "name", "[a-zA-Z_:]"),
        ("cpu usage", {}, "name", "[a-zA-Z_:]"),
        (None, {}, "name", "non-empty string"),
        ("cpu", {"1x": "a"}, "labels", "[a-zA-Z_]"),
        ("cpu", {"a:b": "a"}, "labels", "[a-zA-Z_]"),
        ("cpu", {"__name__": "a"}, "labels", "reserved"),
        ("cpu", {"host": ""}, "labels.host", "must not be empty"),
        ("cpu", {"host": 5}, "labels.host", "must be a valid UTF-8 string"),
        ("cpu", {"host": "\ud800"}, "labels.host", "must be a valid UTF-8 string"),
        ("cpu", ["host"], "labels", "object of strings"),
        ("cpu", {"image": "a" * 2049}, "labels.image", "max_label_value_length=2048"),
        ("cpu", {f"l{i}": "v" for i in range(33)}, "labels", "max_labels_per_series=32"),
    ],
)
def test_validate_series_rejects(name: object, labels: object, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_series(name, labels)
    assert raised.value.field == field
    assert fragment in str(raised.value)


def test_validate_series_limits_configurable() -> None:
    limits = Limits(max_labels_per_series=1)
    with pytest.raises(ValidationError) as raised:
        validate_series("cpu", {"a": "1", "b": "2"}, limits=limits)
    assert "max_labels_per_series=1" in str(raised.value)
    assert validate_series("cpu", {"a": "1"}, limits=limits)[1] == {"a": "1"}


def test_long_error_values_shortened() -> None:
    with pytest.raises(ValidationError) as raised:
        validate_series("cpu", {"image": "a" * 70_000})
    assert len(str(raised.value)) < 300
    assert "70002 characters" in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "expected"), [(1, 1.0), (2.5, 2.5), ("+Inf", float("inf")), ("-Inf", float("-inf"))]
)
def test_parse_value_numbers(raw: object, expected: float) -> None:
    assert parse_value(raw) == expected


def test_parse_value_nan_string() -> None:
    assert parse_value("NaN") != parse_value("NaN")


@pytest.mark.parametrize("raw", [True, "12", None, [1], "nan"])
def test_parse_value_rejects(raw: object) -> None:
    with pytest.raises(ValidationError):
        parse_value(raw)


def test_policy_roundtrip() -> None:
    policy = RetentionPolicy(
        name="p",
        retention_period=timedelta(hours=24),
        downsampling_interval=timedelta(minutes=5),
        max_points_per_series=1000,
        downsample_after=timedelta(hours=1),
    )
    data = policy.to_dict()
    assert data == {
        "name": "p",
        "retention_period": 86400.0,
        "downsampling_interval": 300.0,
        "max_points_per_series": 1000,
        "downsample_after": 3600.0,
    }
    assert RetentionPolicy.from_dict(data) == policy


def test_policy_defaults() -> None:
    policy = RetentionPolicy("p", timedelta(days=1))
    assert policy.downsampling_interval is None
    assert policy.max_points_per_series is None
    assert policy.downsample_after == timedelta(hours=2)
    assert RetentionPolicy.from_dict({"name": "p", "retention_period": 86400}) == policy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retention_period": timedelta(0)}, "retention_period"),
        ({"retention_period": 3600}, "retention_period"),
        ({"downsampling_interval": timedelta(days=2)}, "downsampling_interval"),
        ({"downsampling_interval": timedelta(microseconds=1500)}, "downsampling_interval"),
        ({"max_points_per_series": 0}, "max_points_per_series"),
        ({"max_points_per_series": True}, "max_points_per_series"),
        ({"downsample_after": timedelta(seconds=-1)}, "downsample_after"),
        ({"name": ""}, "name"),
    ],
)
def test_policy_rejects(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"name": "p", "retention_period": timedelta(days=1)}
    arguments.update(kwargs)
    with pytest.raises(ValidationError) as raised:
        RetentionPolicy(**arguments)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_policy_from_dict_rejects_unknown() -> None:
    with pytest.raises(ValidationError) as raised:
        RetentionPolicy.from_dict({"name": "p", "retention_period": 60, "retention": 5})
    assert "unknown keys" in str(raised.value)
    assert "'retention'" in str(raised.value)


def test_default_limits_values() -> None:
    assert DEFAULT_LIMITS.max_future_skew_ms == 600_000
    assert DEFAULT_LIMITS.max_labels_per_series == 32
