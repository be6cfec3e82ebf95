"""How long to wait before trying the service again: capped exponential backoff with jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.5  # seconds before the first retry
    multiplier: float = 2.0
    maximum: float = 15.0  # no single wait is longer
    jitter: float = 0.25  # each wait is scaled by a random factor in [1 - jitter, 1 + jitter]
    give_up_after: float | None = 3600.0  # total seconds of waiting; None waits forever

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between attempts; the iterator ends when the policy gives up."""
        rng = rng or random.Random()
        base, waited = self.initial, 0.0
        while self.give_up_after is None or waited < self.give_up_after:
            delay = min(base, self.maximum) * rng.uniform(1 - self.jitter, 1 + self.jitter)
            if self.give_up_after is not None:
                delay = min(delay, self.give_up_after - waited)
            waited += delay
            yield delay
            base *= self.multiplier


def retry_after(headers: Mapping[str, str]) -> float:
    """The seconds a Retry-After header asks for (its delta-seconds form), else 0."""
    value = headers.get("retry-after", "")
    try:
        return max(0.0, min(float(value), 300.0))
    except ValueError:
        return 0.0
