"""The one retry/backoff policy: exponential from a base, capped. Used by every place that waits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float  # seconds before the first retry
    cap: float  # never wait longer than this
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0 for none)."""
        if failures <= 0 or self.base <= 0:
            return 0.0
        # Computed in the exponent's domain so that a long failure streak cannot overflow a float.
        exponent = min(failures - 1, 64)
        return float(min(self.base * self.factor**exponent, self.cap))

    def delays(self, attempts: int) -> list[float]:
        """Waits before attempt 2, 3, ... of ``attempts``."""
        return [self.delay(n) for n in range(1, max(0, attempts - 1) + 1)]
