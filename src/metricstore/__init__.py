"""metricstore: a time-series database for container and host metrics.

The public library API is re-exported here; the modules it lives in may move.
"""

from metricstore.errors import (
    MetricstoreError as MetricstoreError,
)
from metricstore.errors import (
    StorageBusyError as StorageBusyError,
)
from metricstore.errors import (
    ValidationError as ValidationError,
)
from metricstore.models import Limits as Limits
from metricstore.models import MetricValue as MetricValue
from metricstore.models import RetentionPolicy as RetentionPolicy
from metricstore.query import QueryEngine as QueryEngine
from metricstore.storage.base import IngestResult as IngestResult
from metricstore.storage.base import Rejection as Rejection
from metricstore.storage.base import TimeSeriesStorage as TimeSeriesStorage
from metricstore.storage.file import FileTimeSeriesStorage as FileTimeSeriesStorage
from metricstore.storage.memory import InMemoryTimeSeriesStorage as InMemoryTimeSeriesStorage
from metricstore.storage.results import SeriesResult as SeriesResult

__version__ = "0.1.0"
