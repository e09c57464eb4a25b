"""Open-loop load at a fixed arrival rate against a served endpoint (bench/serving_load.py and the bounded
load test): request ``i`` is sent at ``start + i / rate`` whether or not earlier ones have answered, and its
latency counts from that scheduled time, so a stalled server shows in the percentiles (no coordinated
omission) instead of slowing the arrivals down."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    rate: float
    seconds: float
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> responses; 0: transport error
    latencies_s: list[float] = field(default_factory=list)  # of every answered request, from its scheduled time
    errors: list[str] = field(default_factory=list)  # the first few failures, for the report

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses.get(200, 0)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000, q)) if self.latencies_s else float("nan")

    def summary(self) -> dict:
        return {"rate": self.rate, "seconds": self.seconds, "sent": self.sent, "failed": self.failed,
                "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


async def fixed_rate(url: str, rate: float, seconds: float, body: Callable[[int], dict],
                     headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> LoadResult:
    """POST ``body(i)`` to ``{url}/rank`` at ``rate`` requests/s for ``seconds``; waits for every answer."""
    import httpx

    result = LoadResult(rate=rate, seconds=seconds)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)

    async def one(client: httpx.AsyncClient, i: int, scheduled: float) -> None:
        try:
            r = await client.post("/rank", json=body(i))
            status = r.status_code
            if status != 200 and len(result.errors) < 5:
                result.errors.append(f"{status}: {r.text[:200]}")
        except httpx.HTTPError as err:
            status = 0
            if len(result.errors) < 5:
                result.errors.append(repr(err))
        result.statuses[status] += 1
        result.latencies_s.append(time.perf_counter() - scheduled)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers, limits=limits) as client:
        start, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, i, scheduled)))
        await asyncio.gather(*tasks)
    return result
