"""Background traffic against the served app for the integration tests (a helper module, not a test module)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

CONTEXT = {"device": 1, "hour": 9}


class Traffic:
    """A background asyncio client: ``concurrency`` loops each POSTing /rank for rotating users until stopped.
    Records (status, arm, Retry-After) per response and transport errors."""

    def __init__(self, url: str, concurrency: int = 4, items: int = 20, headers: dict | None = None):
        self.url, self.concurrency, self.items, self.headers = url, concurrency, list(range(1, items + 1)), headers
        self.results: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        user = worker
        while not self._stop.is_set():
            user += self.concurrency
            try:
                r = await client.post("/rank", json={"user_id": user % 997, "items": self.items, "context": CONTEXT})
                self.results.append((r.status_code, r.json().get("arm") if r.status_code == 200 else r.text))
            except httpx.HTTPError as err:
                self.errors.append(repr(err))

    async def _main(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30, headers=self.headers) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.concurrency)))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "traffic did not stop: a request hung"

    def mark(self) -> int:
        return len(self.results)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while len(self.results) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.results) >= n, f"only {len(self.results)} responses in {timeout}s"

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200] + self.errors


def replica_names(deployment: str) -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::mixrec#{deployment}#")}


def running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications["mixrec"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)
