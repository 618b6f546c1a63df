"""The load shape shared by every load generator: closed loop (concurrency) or open loop (rate)."""

from __future__ import annotations


def check_load_shape(concurrency: int | None, rate: float | None) -> None:
    """Raise ValueError unless at most one of the two is given, and it is in range."""
    if concurrency is not None and rate is not None:
        raise ValueError("give either concurrency (closed loop) or rate (open loop), not both")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0")
