"""ActorTimeSeriesStorage: the TimeSeriesStorage interface over the actor pipeline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from metricstore.actors.feed import FeedBuffer
from metricstore.actors.messages import (
    Mailbox,
    Message,
    decode_key,
    encode_key,
    float_column,
    int_column,
    read_floats,
    read_ints,
    send_request,
)
from metricstore.batch import SeriesDefinition
from metricstore.errors import MetricstoreError, StorageUnavailableError
from metricstore.models import Limits, RetentionPolicy, SeriesKey
from metricstore.storage.base import (
    IngestResult,
    Rejection,
    TimeSeriesStorage,
    check_aggregation,
    retention_window,
)
from metricstore.storage.matchers import Matcher
from metricstore.storage.results import Aggregation, SeriesResult


class ActorTimeSeriesStorage(TimeSeriesStorage):
    """Turns storage calls into messages to the pipeline's actors.

    Only ``open_pipeline`` builds one. A write waits at most
    ``busy_timeout_s`` for the ingest actor to take it, then raises
    StorageBusyError; after shutdown every call raises StorageClosedError.
    """

    def __init__(
        self,
        *,
        policy: RetentionPolicy,
        limits: Limits,
        ingest: Mailbox,
        query: Mailbox,
        index: Mailbox,
        retention: Mailbox,
        hub: Mailbox,
        busy_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._limits = limits
        self._ingest = ingest
        self._query = query
        self._index = index
        self._retention = retention
        self._hub = hub
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        # Immutable facts learned from the index, cached so that repeated
        # writes and reads do not carry series keys through the actors: a
        # key's id and shard never change, and neither does an id's key.
        # Every task of the server may read and fill them; no entry is
        # ever changed once set.
        self._id_of_key: dict[SeriesKey, tuple[int, int, str]] = {}
        self._key_of_id: dict[int, SeriesKey] = {}

    @property
    def limits(self) -> Limits:
        return self._limits

    async def aclose(self) -> None:
        for mailbox in (self._ingest, self._query, self._index, self._retention, self._hub):
            await mailbox.aclose()

    # -- writes --------------------------------------------------------------

    @property
    def known_series(self) -> Container[SeriesKey]:
        return self._id_of_key

    async def resolve_series(
        self, definitions: list[SeriesDefinition]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], dict[int, str]]:
        ids = np.empty(len(definitions), dtype=np.int64)
        shards = np.empty(len(definitions), dtype=np.int64)
        unknown: list[int] = []
        for slot, definition in enumerate(definitions):
            cached = self._id_of_key.get(definition.key)
            # A new unit must reach the index, which records it.
            if cached is None or (definition.unit and definition.unit != cached[2]):
                unknown.append(slot)
            else:
                ids[slot], shards[slot] = cached[0], cached[1]
        errors: dict[int, str] = {}
        if not unknown:
            return ids, shards, errors

        answer = await self._call(
            self._index,
            {
                "type": "resolve",
                "series": [
                    encode_key(definitions[slot].key, definitions[slot].unit) for slot in unknown
                ],
            },
        )
        resolved_ids, resolved_shards = read_ints(answer["ids"]), read_ints(answer["shards"])
        for position, error in answer["errors"]:
            errors[unknown[int(position)]] = str(error)
        if len(self._id_of_key) > 2 * self._limits.max_series:
            # Bounds the caches under series churn; they refill on demand.
            self._id_of_key.clear()
            self._key_of_id.clear()
        for position, slot in enumerate(unknown):
            series_id, shard = int(resolved_ids[position]), int(resolved_shards[position])
            ids[slot], shards[slot] = series_id, shard
            if series_id >= 0:
                definition = definitions[slot]
                self._id_of_key[definition.key] = (series_id, shard, definition.unit)
                self._key_of_id[series_id] = definition.key
        return ids, shards, errors

    async def ingest_resolved(
        self,
        ids: npt.NDArray[np.int64],
        shards: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        positions: npt.NDArray[np.int64],
    ) -> IngestResult:
        message = {
            "type": "ingest",
            "ids": int_column(ids),
            "shards": int_column(shards),
            "timestamps": int_column(timestamps),
            "values": float_column(values),
            "positions": int_column(positions),
        }
        return await self._send_ingest(message)

    async def _send_ingest(self, message: Message) -> IngestResult:
        answer = await self._call(self._ingest, message, send_timeout=self._busy_timeout_s)
        return IngestResult(
            accepted=answer["accepted"],
            rejected=[Rejection(int(index), str(error)) for index, error in answer["rejected"]],
        )

    async def _call(
        self, mailbox: Mailbox, message: Message, *, send_timeout: float = math.inf
    ) -> Message:
        answer = await send_request(mailbox, message, send_timeout=send_timeout)
        if "error" in answer:
            if answer.get("code") == "unavailable":
                raise StorageUnavailableError(answer["error"])
            raise MetricstoreError(answer["error"])
        return answer

    # -- reads ---------------------------------------------------------------

    def _window(self, start_ms: int | None, end_ms: int | None) -> tuple[int, int]:
        now_ms = round(self._clock() * 1000)
        return retention_window(start_ms, end_ms, now_ms, self.policy.retention_ms)

    async def _read(self, message: Message) -> list[SeriesResult]:
        answer = await self._call(self._query, message)
        ids = read_ints(answer["ids"])
        counts = read_ints(answer["counts"])
        timestamps = read_ints(answer["timestamps"])
        values = read_floats(answer["values"])
        present = counts > 0
        keys = await self._keys_of(ids[present])
        ends = np.cumsum(counts)[present].tolist()
        units = [unit for unit, keep in zip(answer["units"], present.tolist(), strict=True) if keep]
        results = []
        for key, unit, end, count in zip(keys, units, ends, counts[present].tolist(), strict=True):
            start = end - count
            results.append(SeriesResult(key, unit, timestamps[start:end], values[start:end]))
        return results

    async def _keys_of(self, ids: npt.NDArray[np.int64]) -> list[SeriesKey]:
        """Return the keys of series ids, asking the index for those not cached."""
        cache = self._key_of_id
        missing = [i for i in ids.tolist() if i not in cache]
        if missing:
            answer = await self._call(
                self._index, {"type": "keys", "ids": int_column(np.array(missing, np.int64))}
            )
            for series_id, encoded in zip(missing, answer["series"], strict=True):
                cache[series_id] = decode_key(encoded)[0]
        return [cache[i] for i in ids.tolist()]

    async def read_series(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        start, end = self._window(start_ms, end_ms)
        return await self._read(
            {
                "type": "read_raw",
                "name": metric_name,
                "labels": labels,
                "start_ms": start,
                "end_ms": end,
            }
        )

    async def read_latest(
        self,
        metric_name: str,
        labels: dict[str, str] | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> list[SeriesResult]:
        floor, _ = self._window(None, None)
        return await self._read(
            {
                "type": "read_latest",
                "name": metric_name,
                "labels": labels,
                "matchers": [matcher.to_dict() for matcher in matchers],
                "floor_ms": floor,
            }
        )

    # -- live feeds ----------------------------------------------------------

    async def subscribe(
        self,
        buffer: FeedBuffer,
        name: str,
        metric_name: str,
        matchers: Sequence[Matcher] = (),
        step_ms: int | None = None,
        aggregation: Aggregation = "avg",
    ) -> int:
        """Start feeding samples of matching series into ``buffer``; return a token.

        Samples are tagged with ``name``. With ``step_ms``, the feed carries
        one ``aggregation`` value per series and step instead of every sample.
        """
        message = {
            "type": "subscribe",
            "name": name,
            "metric": metric_name,
            "matchers": [matcher.to_dict() for matcher in matchers],
            "step_ms": step_ms,
            "aggregation": aggregation,
        }
        answer = await send_request(self._hub, message, attachment=buffer)
        if "error" in answer:
            raise MetricstoreError(answer["error"])
        return int(answer["token"])

    async def close_feeds(self) -> None:
        """Close every live feed, as the server does when it starts shutting down."""
        await self._call(self._hub, {"type": "close_all"})

    async def unsubscribe(self, token: int) -> None:
        await self._call(self._hub, {"type": "unsubscribe", "token": token})

    async def read_range(
        self,
        metric_name: str,
        start_ms: int,
        end_ms: int,
        step_ms: int,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        check_aggregation(aggregation)
        start, end = self._window(start_ms, end_ms)
        return await self._read(
            {
                "type": "read_range",
                "name": metric_name,
                "labels": labels,
                "start_ms": start,
                "end_ms": end,
                "step_ms": step_ms,
                "aggregation": aggregation,
            }
        )

    async def read_aggregate(
        self,
        metric_name: str,
        start_ms: int | None,
        end_ms: int | None,
        aggregation: Aggregation,
        labels: dict[str, str] | None = None,
    ) -> list[SeriesResult]:
        check_aggregation(aggregation)
        start, end = self._window(start_ms, end_ms)
        return await self._read(
            {
                "type": "read_aggregate",
                "name": metric_name,
                "labels": labels,
                "start_ms": start,
                "end_ms": end,
                "aggregation": aggregation,
            }
        )

    # -- metadata and maintenance ----------------------------------------------

    async def get_metric_names(self) -> list[str]:
        return list((await self._call(self._query, {"type": "metric_names"}))["values"])

    async def get_label_keys(self) -> list[str]:
        return list((await self._call(self._query, {"type": "label_keys"}))["values"])

    async def get_label_values(self, label_key: str) -> list[str]:
        answer = await self._call(self._query, {"type": "label_values", "key": label_key})
        return list(answer["values"])

    async def apply_retention_policy(self) -> None:
        await self._call(self._retention, {"type": "retain"})

    async def cut_heads(self) -> None:
        """Turn every shard's head into a block now (for benchmarks and tests)."""
        await self._call(self._query, {"type": "cut_head"})

    async def get_storage_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"storage": "memory", "policy": self.policy.to_dict()}
        stats.update(await self._call(self._query, {"type": "stats"}))
        stats["shards"] = len(stats["per_shard"])
        return stats
