"""Retry policy arithmetic: which errors retry, and how long to wait. Pure functions."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field


class RetryConfig(BaseModel):
    """Seed 001's `RetryConfig`. `max_retries` counts retries, so a job runs at most
    `max_retries + 1` times. An empty `retry_on_errors` retries every retryable error;
    otherwise only the named codes (compared case-insensitively) are retried."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, le=100)
    retry_delay_seconds: float = Field(60.0, ge=0, le=86_400)
    exponential_backoff: bool = True
    max_delay_seconds: float = Field(3600.0, ge=0, le=7 * 86_400)
    retry_on_errors: list[str] = Field(default_factory=list, max_length=50)

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def retries(self, code: str) -> bool:
        if not self.retry_on_errors:
            return True
        return code.lower() in {c.lower() for c in self.retry_on_errors}

    def delay(self, retry_count: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry_count + 1`.

        `base * 2**retry_count`, capped, then "equal jitter": half fixed, half random, so a
        burst of failures spreads out while each delay stays at least half the nominal one.
        """
        base = self.retry_delay_seconds
        nominal = base * (2**retry_count) if self.exponential_backoff else base
        nominal = min(nominal, self.max_delay_seconds)
        r = (rng or random).random()
        return nominal / 2 + r * nominal / 2
