"""The scraper actor: pull Prometheus text-format endpoints on a fixed interval.

Each target runs its own loop in one nursery, so a slow or dead target does
not delay the others. Every scrape stores the target's samples plus the
per-target series Prometheus adds (``up``, ``scrape_duration_seconds``,
``scrape_samples_scraped``), all labelled with ``job`` and ``instance``.
Target failures, invalid samples and storage errors (MetricstoreError) are
logged, not raised, so the scraper keeps running whatever its targets do.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import httpx
import trio

from metricstore.errors import MetricstoreError, ValidationError
from metricstore.exposition import ExpositionError, ParsedScrape, parse_exposition
from metricstore.log_throttle import LogThrottle
from metricstore.models import DEFAULT_LIMITS, Limits, MetricValue, validate_series
from metricstore.times import ms_to_datetime

logger = logging.getLogger("metricstore.scraper")

# The classic Prometheus text format, the only one parse_exposition reads.
ACCEPT_HEADER = "text/plain;version=0.0.4"

# Failures, skipped samples, storage rejections and storage errors of one
# target are each logged at WARNING at most once per this many seconds, with
# a count of the ones held back.
LOG_PERIOD_S = 60.0

# Bodies of at least this many characters are parsed in a worker thread, so
# parsing a big exposition does not stall every other task. Smaller ones
# parse inline, which is cheaper than a thread hand-off.
THREAD_PARSE_MIN_CHARS = 256 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Content types that parse_exposition would misread. A server may send them
# although the request accepts only the text format.
_UNSUPPORTED_CONTENT_TYPES = ("application/openmetrics-text", "application/vnd.google.protobuf")


class RejectionLike(Protocol):
    """One sample that the storage did not store, as ``storage.base.Rejection``."""

    @property
    def error(self) -> str: ...


class IngestResultLike(Protocol):
    """The outcome of one ``store_metrics`` call, as ``storage.base.IngestResult``."""

    @property
    def rejected(self) -> Sequence[RejectionLike]: ...


class MetricSink(Protocol):
    """The destination of scraped rows: a TimeSeriesStorage or any object with its store_metrics."""

    async def store_metrics(self, metrics: list[MetricValue]) -> IngestResultLike: ...


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One endpoint to scrape, with the ``job`` label its series get.

    ``url`` must be an absolute http or https URL with a host and may carry
    a query. ``instance`` is "host:port", with the scheme's default port
    when the URL has none, as Prometheus derives it. Raises ValidationError
    for an invalid job or URL.
    """

    job: str
    # Hidden from repr because it may contain a password.
    url: str = field(repr=False)
    instance: str = field(init=False, compare=False)
    # The URL without user information, safe to log.
    display_url: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not self.job:
            raise ValidationError("scrape target job", self.job, "a job name must be non-empty")
        url = _parse_target_url(self.url)
        port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
        host = f"[{url.host}]" if ":" in url.host else url.host
        instance = f"{host}:{port}"
        # The job and instance become label values on every series.
        validate_series("up", {"job": self.job, "instance": instance})
        object.__setattr__(self, "instance", instance)
        object.__setattr__(self, "display_url", str(url.copy_with(username=None, password=None)))


def parse_scrape_target(spec: str, default_job: str = "scrape") -> ScrapeTarget:
    """Parse a ``[JOB=]URL`` command-line value into a ScrapeTarget.

    The text before the first "=" is the job unless it contains "://", so a
    URL with "=" in its query needs no job. Raises ValidationError with the
    expected form when the value is invalid.
    """
    text = spec.strip()
    job = default_job
    prefix, separator, rest = text.partition("=")
    if separator and "://" not in prefix:
        job = prefix.strip()
        text = rest.strip()
        if not job:
            raise ValidationError(
                "scrape target", spec, "the job before '=' is empty, expected JOB=URL or URL"
            )
    return ScrapeTarget(job=job, url=text)


def _parse_target_url(text: object) -> httpx.URL:
    example = "e.g. http://127.0.0.1:9100/metrics"
    if not isinstance(text, str):
        raise ValidationError("scrape target URL", text, "a URL must be a string")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        raise ValidationError("scrape target URL", text, f"{error}, {example}") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise ValidationError(
            "scrape target URL", text, f"the URL must start with http:// or https://, {example}"
        )
    if not url.host:
        raise ValidationError("scrape target URL", text, f"the URL has no host, {example}")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValidationError("scrape target URL", text, "the port must be in 1..65535")
    return url


async def run_scraper(
    targets: Sequence[ScrapeTarget],
    interval_s: float,
    storage: MetricSink,
    *,
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.time,
    limits: Limits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Scrape every target each ``interval_s`` seconds until cancelled.

    ``clock`` returns wall-clock Unix seconds and stamps the samples that
    carry no timestamp of their own; scheduling uses the trio clock.
    ``timeout_s`` bounds each whole scrape and is capped at ``interval_s``,
    because Prometheus does not allow a timeout longer than the interval
    either. ``limits`` bounds the body size
    (``max_body_bytes``) and each series. With no targets, this returns
    after ``task_status.started()``. Raises ValidationError for a
    non-positive interval or timeout, or two targets with the same job and
    instance, whose series would collide.
    """
    _check_schedule(interval_s, timeout_s)
    check_unique_targets(targets)
    timeout_s = min(timeout_s, interval_s)
    if not targets:
        task_status.started()
        return

    logger.info(
        "scraper started: %d targets, interval %gs, timeout %gs",
        len(targets),
        interval_s,
        timeout_s,
    )
    try:
        async with _open_client(timeout_s, len(targets)) as client, trio.open_nursery() as nursery:
            for target in targets:
                scraper = _TargetScraper(target, client, storage, timeout_s, clock, limits)
                nursery.start_soon(scraper.run, interval_s, name=f"scrape {target.display_url}")
            task_status.started()
    finally:
        logger.info("scraper stopped")


def _check_schedule(interval_s: float, timeout_s: float) -> None:
    for name, value in (("scrape interval", interval_s), ("scrape timeout", timeout_s)):
        if not math.isfinite(value) or value <= 0:
            raise ValidationError(name, value, "must be a positive number of seconds")


def check_unique_targets(targets: Sequence[ScrapeTarget]) -> None:
    seen: dict[tuple[str, str], ScrapeTarget] = {}
    for target in targets:
        key = (target.job, target.instance)
        if key in seen:
            raise ValidationError(
                "scrape target",
                target.display_url,
                f"job {target.job!r} already scrapes instance {target.instance!r} "
                f"({seen[key].display_url}), so give one of them another job name",
            )
        seen[key] = target


def _open_client(timeout_s: float, target_count: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={"Accept": ACCEPT_HEADER, "User-Agent": "metricstore-scraper"},
        timeout=httpx.Timeout(timeout_s),
        # Prometheus follows redirects and ignores proxy variables by default.
        follow_redirects=True,
        trust_env=False,
        # Each target has at most one request in flight.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=target_count),
    )


def _describe_http_error(error: httpx.HTTPError) -> str:
    """Describe an httpx error with the OS errors behind it, such as "Connection refused".

    httpx 0.29 on anyio reports a failed connect as "all attempts to connect
    to HOST:PORT failed" and keeps the per-address errors in an
    ExceptionGroup further down the cause chain.
    """
    reasons: list[str] = []
    cause = error.__cause__ or error.__context__
    for _ in range(10):
        if cause is None:
            break
        if isinstance(cause, BaseExceptionGroup):
            leaves = cause.exceptions
        else:
            leaves = (cause,)
        # os.strerror gives "Connection refused" where trio's strerror also
        # repeats the address.
        reasons += [
            os.strerror(leaf.errno) for leaf in leaves if isinstance(leaf, OSError) and leaf.errno
        ]
        cause = cause.__cause__ or cause.__context__
    text = f"{type(error).__name__}: {error}"
    if reasons:
        text += f" ({', '.join(dict.fromkeys(reasons))})"
    return text


class _ScrapeError(Exception):
    """A failed scrape, whose message is logged as the reason."""


class _TargetScraper:
    """The scrape loop and log state of one target."""

    def __init__(
        self,
        target: ScrapeTarget,
        client: httpx.AsyncClient,
        storage: MetricSink,
        timeout_s: float,
        clock: Callable[[], float],
        limits: Limits,
    ) -> None:
        self.target = target
        self.client = client
        self.storage = storage
        self.timeout_s = timeout_s
        self.clock = clock
        self.limits = limits
        self.consecutive_failures = 0
        self.failure_reported = False
        self.failure_log = LogThrottle(LOG_PERIOD_S)
        self.skipped_log = LogThrottle(LOG_PERIOD_S)
        self.skipped_since_log = 0
        self.rejected_log = LogThrottle(LOG_PERIOD_S)
        self.rejected_since_log = 0
        self.store_error_log = LogThrottle(LOG_PERIOD_S)

    async def run(self, interval_s: float) -> None:
        next_start = trio.current_time()
        while True:
            await self.scrape_once()
            next_start += interval_s
            now = trio.current_time()
            if next_start < now:
                # The scrape or the store overran, so skip the missed slots
                # instead of scraping back to back.
                missed = math.floor((now - next_start) / interval_s) + 1
                next_start += missed * interval_s
                logger.debug(
                    "scrape of %s overran its interval, so %d slots were skipped",
                    self.target.display_url,
                    missed,
                )
            await trio.sleep_until(next_start)

    async def scrape_once(self) -> None:
        """Scrape the target once and store its samples and per-target series."""
        scrape_ms = round(self.clock() * 1000)
        started = trio.current_time()
        try:
            parsed = await self._parse(await self._fetch(), scrape_ms)
        except _ScrapeError as error:
            self._log_failure(str(error))
            rows = self._report_rows(scrape_ms, 0, trio.current_time() - started, 0)
        else:
            self._log_success()
            self._log_skipped(parsed)
            rows = parsed.rows
            rows += self._report_rows(
                scrape_ms, 1, trio.current_time() - started, parsed.samples_scraped
            )
        await self._store(rows)

    async def _fetch(self) -> str:
        with trio.move_on_after(self.timeout_s):
            try:
                body = await self._request()
            except httpx.TimeoutException as error:
                raise _ScrapeError(
                    f"timed out after {self.timeout_s:g}s ({type(error).__name__})"
                ) from None
            except httpx.HTTPError as error:
                raise _ScrapeError(_describe_http_error(error)) from None
            try:
                return body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _ScrapeError(f"body is not valid UTF-8: {error}") from None
        raise _ScrapeError(f"timed out after {self.timeout_s:g}s")

    async def _request(self) -> bytes:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": f"{self.timeout_s:g}"}
        async with self.client.stream("GET", self.target.url, headers=headers) as response:
            if response.status_code != 200:
                # An HTTP/1.1 server may send an empty reason phrase, as hypercorn does.
                reason = response.reason_phrase or httpx.codes.get_reason_phrase(
                    response.status_code
                )
                raise _ScrapeError(
                    f"server returned HTTP status {response.status_code} {reason}".rstrip()
                )
            content_type = response.headers.get("content-type", "")
            if content_type.lower().startswith(_UNSUPPORTED_CONTENT_TYPES):
                raise _ScrapeError(
                    f"unsupported Content-Type {content_type!r}, expected the Prometheus "
                    f"text format ({ACCEPT_HEADER})"
                )
            # The limit applies after decompression, so a small gzip body
            # cannot expand without bound.
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.limits.max_body_bytes:
                    raise _ScrapeError(
                        f"body larger than max_body_bytes={self.limits.max_body_bytes}"
                    )
                chunks.append(chunk)
            return b"".join(chunks)

    async def _parse(self, text: str, scrape_ms: int) -> ParsedScrape:
        parse = partial(
            parse_exposition,
            text,
            job=self.target.job,
            instance=self.target.instance,
            scrape_ms=scrape_ms,
            limits=self.limits,
        )
        try:
            if len(text) >= THREAD_PARSE_MIN_CHARS:
                return await trio.to_thread.run_sync(parse)
            return parse()
        except ExpositionError as error:
            raise _ScrapeError(str(error)) from None

    def _report_rows(
        self, scrape_ms: int, up: int, duration_s: float, samples_scraped: int
    ) -> list[MetricValue]:
        timestamp = ms_to_datetime(scrape_ms)
        values = (
            ("up", float(up)),
            ("scrape_duration_seconds", duration_s),
            ("scrape_samples_scraped", float(samples_scraped)),
        )
        return [
            MetricValue(
                name=name,
                value=value,
                timestamp=timestamp,
                labels={"job": self.target.job, "instance": self.target.instance},
            )
            for name, value in values
        ]

    async def _store(self, rows: list[MetricValue]) -> None:
        try:
            result = await self.storage.store_metrics(rows)
        except MetricstoreError as error:
            # A busy or closed pipeline loses this scrape, and the next scrape tries again.
            held_back = self.store_error_log.admit(trio.current_time())
            if held_back is not None:
                logger.warning(
                    "storing the scrape of %s (job %s) failed: %s (%d such failures not logged)",
                    self.target.display_url,
                    self.target.job,
                    error,
                    held_back,
                )
            return
        if result.rejected:
            self._log_rejected(len(rows), result.rejected)

    def _log_failure(self, reason: str) -> None:
        # The throttle is not reset when a new run of failures starts, so a
        # target that flaps between up and down is also logged at most once
        # per LOG_PERIOD_S.
        self.consecutive_failures += 1
        held_back = self.failure_log.admit(trio.current_time())
        if held_back is None:
            return
        self.failure_reported = True
        if self.consecutive_failures == 1:
            unlogged = f" ({held_back} earlier failures not logged)" if held_back else ""
            logger.warning(
                "scrape of %s (job %s) failed: %s%s",
                self.target.display_url,
                self.target.job,
                reason,
                unlogged,
            )
        else:
            logger.warning(
                "scrape of %s (job %s) still failing after %d attempts: %s "
                "(%d failures since the last report not logged)",
                self.target.display_url,
                self.target.job,
                self.consecutive_failures,
                reason,
                held_back,
            )

    def _log_success(self) -> None:
        # A recovery is logged only when a failure of the same run was, so
        # each logged outage gets exactly one recovery line.
        if self.failure_reported:
            logger.info(
                "scrape of %s (job %s) recovered after %d failed attempts",
                self.target.display_url,
                self.target.job,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self.failure_reported = False

    def _log_skipped(self, parsed: ParsedScrape) -> None:
        if not parsed.skipped:
            return
        self.skipped_since_log += parsed.skipped
        if self.skipped_log.admit(trio.current_time()) is None:
            return
        logger.warning(
            "skipped %d invalid samples from %s (job %s) since the last report, for example: %s",
            self.skipped_since_log,
            self.target.display_url,
            self.target.job,
            "; ".join(parsed.errors),
        )
        self.skipped_since_log = 0

    def _log_rejected(self, batch_size: int, rejected: Sequence[RejectionLike]) -> None:
        self.rejected_since_log += len(rejected)
        first_error = rejected[0].error
        if self.rejected_log.admit(trio.current_time()) is None:
            logger.debug(
                "storage rejected %d of %d samples from %s: %s",
                len(rejected),
                batch_size,
                self.target.display_url,
                first_error,
            )
            return
        logger.warning(
            "storage rejected %d samples from %s (job %s) since the last report, latest: %s",
            self.rejected_since_log,
            self.target.display_url,
            self.target.job,
            first_error,
        )
        self.rejected_since_log = 0
