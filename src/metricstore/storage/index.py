"""The series index: series identities, their ids and the label postings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence

import numpy as np
import numpy.typing as npt

from metricstore.errors import ValidationError
from metricstore.models import DEFAULT_LIMITS, Limits, SeriesKey
from metricstore.storage.matchers import Matcher, matches_key

SeriesIds = npt.NDArray[np.int64]


class SeriesIndex:
    """Maps series keys to dense integer ids and finds series by label.

    Ids are never reused, so an id cached by a client connection stays valid.
    A series whose samples have all expired is deactivated: it leaves the
    postings (and so every listing and query) until a new sample revives it.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._id_by_key: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey] = []
        self.units: list[str] = []
        self._active: list[bool] = []
        self._active_count = 0
        # Ids that have never had a sample; they count towards max_series
        # too, so rejected or unused definitions cannot grow the index
        # without bound.
        self._never_active: set[int] = set()
        # Postings: the ids of active series per metric name and per label pair.
        self._by_name: dict[str, set[int]] = defaultdict(set)
        self._by_label: dict[tuple[str, str], set[int]] = defaultdict(set)
        # Active ids of each metric name ordered by series key, rebuilt lazily
        # after the name's postings change.
        self._ordered: dict[str, SeriesIds] = {}

    def __len__(self) -> int:
        return self._active_count

    @property
    def total_ids(self) -> int:
        return len(self.keys)

    @property
    def known(self) -> Container[SeriesKey]:
        """Every key that has an id; all were validated when created."""
        return self._id_by_key

    def lookup(self, key: SeriesKey) -> int | None:
        return self._id_by_key.get(key)

    def resolve(self, key: SeriesKey, unit: str = "") -> tuple[int, bool]:
        """Return the id of ``key``, creating it if new; the flag is True if created.

        A new series starts inactive: it is activated once a sample of it is
        stored, so a series whose every sample was rejected lists nowhere.
        A non-empty ``unit`` replaces the series' unit, since the unit is
        metadata and not identity. Raises ValidationError when a new series
        would pass ``max_series`` series, counting those with samples and
        those that never had one.
        """
        series_id = self._id_by_key.get(key)
        if series_id is not None:
            if unit and self.units[series_id] != unit:
                self.units[series_id] = unit
            return series_id, False

        if self._active_count + len(self._never_active) >= self._limits.max_series:
            raise ValidationError(
                "series",
                key[0],
                f"the store already holds max_series={self._limits.max_series} series; "
                "drop unused label values or raise the limit",
            )
        series_id = len(self.keys)
        self._id_by_key[key] = series_id
        self.keys.append(key)
        self.units.append(unit)
        # NOTE: ids are never freed: a series that expires keeps its id (a
        # few dozen bytes) so cached ids stay valid, and an id that never
        # got a sample keeps counting towards max_series.
        self._active.append(False)
        self._never_active.add(series_id)
        return series_id, True

    def activate(self, series_ids: list[int]) -> None:
        for series_id in series_ids:
            if self._active[series_id]:
                continue
            self._active[series_id] = True
            self._active_count += 1
            self._never_active.discard(series_id)
            self._update_postings(series_id, add=True)

    def deactivate(self, series_ids: list[int]) -> None:
        for series_id in series_ids:
            if not self._active[series_id]:
                continue
            self._active[series_id] = False
            self._active_count -= 1
            self._update_postings(series_id, add=False)

    def _update_postings(self, series_id: int, *, add: bool) -> None:
        name, labels = self.keys[series_id]
        self._ordered.pop(name, None)
        targets = [self._by_name[name]] + [self._by_label[pair] for pair in labels]
        for postings in targets:
            if add:
                postings.add(series_id)
            else:
                postings.discard(series_id)
        if not add:
            self._prune(name, labels)

    def _prune(self, name: str, labels: tuple[tuple[str, str], ...]) -> None:
        if not self._by_name[name]:
            del self._by_name[name]
        for pair in labels:
            if not self._by_label[pair]:
                del self._by_label[pair]

    def select(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> SeriesIds:
        """Return the ids of active series of ``name`` with every label pair and matcher.

        The ids come ordered by series key, which is the order of query results.
        """
        selected = self._select_labels(name, labels)
        if not matchers:
            return selected
        keys = self.keys
        keep = [matches_key(keys[i], matchers) for i in selected.tolist()]
        return selected[np.array(keep, dtype=np.bool_)] if keep else selected

    def _select_labels(self, name: str, labels: dict[str, str] | None) -> SeriesIds:
        ordered = self._ordered.get(name)
        if ordered is None:
            members = self._by_name.get(name, set())
            ordered = np.array(sorted(members, key=self.keys.__getitem__), dtype=np.int64)
            self._ordered[name] = ordered
        if not labels:
            return ordered

        wanted: set[int] | None = None
        for pair in labels.items():
            postings = self._by_label.get(pair)
            if not postings:
                return np.empty(0, dtype=np.int64)
            wanted = set(postings) if wanted is None else wanted & postings
        assert wanted is not None
        return ordered[np.isin(ordered, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))]

    def metric_names(self) -> list[str]:
        return sorted(self._by_name)

    def label_keys(self) -> list[str]:
        return sorted({label for label, _ in self._by_label})

    def label_values(self, label_key: str) -> list[str]:
        return sorted(value for label, value in self._by_label if label == label_key)
