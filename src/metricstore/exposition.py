"""Convert a Prometheus text exposition (format 0.0.4) into MetricValue rows.

The module is pure, without I/O or trio, so the scraper can call it inline or
in a worker thread. ``prometheus_client.parser`` does the parsing, and this
module maps its output to series the way a Prometheus 2.x server stores a
scrape.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_fd_to_metric_families
from prometheus_client.samples import Sample, Timestamp

from metricstore.errors import MetricstoreError, ValidationError
from metricstore.models import DEFAULT_LIMITS, Limits, MetricValue, validate_series
from metricstore.times import ms_to_datetime

# ParsedScrape.errors keeps this many messages, so one broken exporter with
# thousands of bad series cannot make a scrape result large.
MAX_EXAMPLE_ERRORS = 5

# Families whose "<family>_created" sample is dropped, see _is_created_sample.
_CREATED_FAMILY_TYPES = frozenset({"counter", "histogram", "summary"})

# "# TYPE <name> counter" as text_fd_to_metric_families reads it: "#" and
# "TYPE" are separate whitespace-split tokens.
_COUNTER_TYPE_LINE_RE = re.compile(r"^[ \t]*#[ \t]+TYPE[ \t]+(\S+)[ \t]+counter[ \t\r]*$", re.M)

# Maximum number of characters of the offending line quoted in an ExpositionError.
_MAX_QUOTED_LINE = 200


class ExpositionError(MetricstoreError, ValueError):
    """A scrape body that is not valid Prometheus text format.

    ``line`` is the 1-based number of the line where parsing stopped.
    """

    def __init__(self, message: str, line: int) -> None:
        self.line = line
        super().__init__(message)


@dataclass(slots=True)
class ParsedScrape:
    """The rows of one scrape and the samples left out for failing validation.

    ``errors`` contains at most MAX_EXAMPLE_ERRORS messages, one per skipped
    sample, in exposition order.
    """

    rows: list[MetricValue] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def samples_scraped(self) -> int:
        """Samples exposed by the target, stored or skipped (dropped ``_created`` excluded)."""
        return len(self.rows) + self.skipped


def parse_exposition(
    text: str,
    *,
    job: str,
    instance: str,
    scrape_ms: int,
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedScrape:
    """Parse a text-format scrape body into rows labelled with ``job`` and ``instance``.

    A sample without its own timestamp gets ``scrape_ms`` (epoch
    milliseconds). A sample whose name or labels break ``limits`` or the
    naming rules is skipped and counted, not raised. Raises ExpositionError
    if the body does not parse at all; nothing is returned for it then,
    which matches Prometheus discarding the whole scrape.
    """
    families = _parse_families(text)

    # A counter declared without the "_total" suffix gets one appended by
    # prometheus_client, which would rename the series. Prometheus stores
    # such a counter under its exposed name, so the suffix is taken off again.
    declared_counters = set(_COUNTER_TYPE_LINE_RE.findall(text))
    created_bases = {name for name, kind, _ in families if kind in _CREATED_FAMILY_TYPES}

    result = ParsedScrape()
    for family_name, kind, samples in families:
        restore_bare_counter = (
            kind == "counter"
            and family_name in declared_counters
            and f"{family_name}_total" not in declared_counters
        )
        for sample in samples:
            name = sample.name
            if restore_bare_counter and name == f"{family_name}_total":
                name = family_name
            if _is_created_sample(name, created_bases):
                continue
            try:
                row = _to_row(name, sample, job, instance, scrape_ms, limits)
            except ValidationError as error:
                result.skipped += 1
                if len(result.errors) < MAX_EXAMPLE_ERRORS:
                    result.errors.append(f"{name}: {error}")
                continue
            result.rows.append(row)
    return result


def _is_created_sample(name: str, created_bases: set[str]) -> bool:
    # A "<family>_created" sample carries the time its counter, histogram or
    # summary was created, not a measurement. client_python before 0.20
    # exposes one per series, which doubles the series count. Prometheus
    # itself stores these as ordinary series unless its
    # created-timestamp-zero-ingestion feature flag is on, and then drops them
    # only from OpenMetrics bodies. This scraper always drops them, which
    # matches that flag. A gauge such as kube_pod_created has no typed family
    # "kube_pod", so it is kept.
    return name.endswith("_created") and name[: -len("_created")] in created_bases


_Family = tuple[str, str, list[Sample]]


class _LineCountingReader(io.StringIO):
    """A text stream that counts the lines read, to report where parsing failed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines_read = 0
        self.last_line = ""

    # typeshed types io.IOBase.__next__ as bytes and ignores this override
    # for TextIOBase the same way.
    def __next__(self) -> str:  # type: ignore[override]
        line = super().__next__()
        self.lines_read += 1
        self.last_line = line
        return line


def _parse_families(text: str) -> list[_Family]:
    # The parser is lazy and reads one line per step, so when it raises, the
    # line read last is where it stopped. That is the offending line, except
    # for an invalid "# TYPE" value, which is reported when its family ends.
    reader = _LineCountingReader(text)
    try:
        return [
            (family.name, family.type, family.samples)
            for family in text_fd_to_metric_families(reader)
        ]
    # prometheus_client 0.26 raises IndexError, not ValueError, for some
    # malformed label sets such as '{a="b", ="c"}'.
    except (ValueError, IndexError) as error:
        raise _parse_error(reader, error) from error


def _parse_error(reader: _LineCountingReader, error: Exception) -> ExpositionError:
    detail = str(error) or type(error).__name__
    quoted = reader.last_line.rstrip("\r\n")
    if len(quoted) > _MAX_QUOTED_LINE:
        quoted = f"{quoted[:_MAX_QUOTED_LINE]}..."
    return ExpositionError(
        f"invalid Prometheus text exposition: parsing stopped at line {reader.lines_read} "
        f"({quoted!r}): {detail}",
        reader.lines_read,
    )


def _to_row(
    name: str, sample: Sample, job: str, instance: str, scrape_ms: int, limits: Limits
) -> MetricValue:
    labels = _target_labels(sample.labels, job, instance)
    name, labels, _ = validate_series(name, labels, "", limits)
    timestamp = _sample_time(sample.timestamp, scrape_ms)
    return MetricValue(name=name, value=float(sample.value), timestamp=timestamp, labels=labels)


def _target_labels(exposed: dict[str, str], job: str, instance: str) -> dict[str, str]:
    """Add the target's labels as Prometheus does with honor_labels: false.

    An exposed label that clashes with a target label is kept under
    "exported_<name>", or "exported_exported_<name>" if that is taken too.
    Empty values are dropped first, because Prometheus treats them as absent.
    """
    labels = {key: value for key, value in exposed.items() if value}
    for target_name, target_value in (("job", job), ("instance", instance)):
        exposed_value = labels.pop(target_name, None)
        if exposed_value is not None:
            renamed = f"exported_{target_name}"
            while renamed in labels:
                renamed = f"exported_{renamed}"
            labels[renamed] = exposed_value
        labels[target_name] = target_value
    return labels


def _sample_time(timestamp: float | Timestamp | None, scrape_ms: int) -> datetime:
    if timestamp is None:
        return ms_to_datetime(scrape_ms)
    # prometheus_client turns the exposed milliseconds into float seconds, and
    # rounding restores the exact integer for any real epoch time.
    seconds = float(timestamp)
    if not math.isfinite(seconds):
        raise ValidationError("timestamp", timestamp, "an exposition timestamp must be finite")
    ms = round(seconds * 1000)
    try:
        return ms_to_datetime(ms)
    except OverflowError:
        raise ValidationError(
            "timestamp", ms, "exposition timestamp (epoch milliseconds) out of range"
        ) from None
