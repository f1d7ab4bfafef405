"""LogThrottle: at most one log line per period for a repeating event."""

from __future__ import annotations

import math


class LogThrottle:
    """Admits one event per period and counts the events held back in between."""

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._next_allowed = -math.inf
        self._held_back = 0

    def admit(self, now: float) -> int | None:
        """Return the number of events held back since the last admitted one, or None."""
        if now < self._next_allowed:
            self._held_back += 1
            return None
        held_back = self._held_back
        self._held_back = 0
        self._next_allowed = now + self._period_s
        return held_back
