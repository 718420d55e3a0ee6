"""Opt-in retries of rate-limited calls.

Only `RateLimited` is retried: the mesh refused before the service saw the
request, so resending is safe whatever the method. The wait honours the
mesh's `retry-after` (never shorter), adds jitter so agents refused together
do not return together, and is bounded: at most `max_attempts` calls, and no
single wait longer than `max_delay`. A `retry-after` beyond `max_delay`
cannot be honoured, so the refusal is raised at once rather than resent
early into a certain second refusal.
"""

import random
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RetryPolicy:
    #: Calls in total, the first included (1 = no retries).
    max_attempts: int = 3
    #: Longest single wait, in seconds.
    max_delay: float = 10.0
    #: Backoff when the mesh sent no `retry-after`: `base_delay * 2**n`.
    base_delay: float = 0.5
    #: Extra wait, as a fraction of the base wait, drawn uniformly from [0, jitter].
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.max_delay < 0 or self.base_delay < 0 or self.jitter < 0:
            raise ValueError("RetryPolicy delays and jitter must be >= 0")

    def delay(self, attempt: int, retry_after: Optional[float]) -> Optional[float]:
        """Seconds to wait after the `attempt`-th call (1-based) was rate
        limited, or `None` to give up and raise."""
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_delay:
                return None
            base = retry_after
        else:
            base = self.base_delay * (2 ** (attempt - 1))
        wait = base * (1.0 + self.rng.uniform(0.0, self.jitter))
        # Never below retry-after, never above max_delay.
        return min(wait, self.max_delay)
