"""Several servers for one model role (`--draft URL1,URL2,...`): requests spread over the replicas, each problem
sticking to one replica so that the server's prefix cache keeps hitting, a replica that stops answering skipped
(and tried again after `retry_after` seconds), and a call failing only when every replica is down.

A problem's replica is chosen by a hash of its key among the replicas that are up, and remembered; when that
replica goes down its problems move to another (they lose their cached prefix there, nothing else). The calls a
batch sends to different replicas go out concurrently.

When one endpoint already balances over its own replicas (vLLM or SGLang data parallelism behind one URL, or a
load balancer), give that one URL instead: it sees the whole batch and schedules it itself.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import BackendError
from .http_common import Unreachable

log = logging.getLogger(__name__)


class Replicas:
    """One model served by several replicas, behind the same protocol as one of them (generator, PRM, router
    or judge)."""

    def __init__(self, replicas: Sequence, retry_after: float = 30.0, clock=time.monotonic):
        if not replicas:
            raise ValueError("at least one replica")
        self.replicas = list(replicas)
        self.retry_after, self.clock = retry_after, clock
        first = self.replicas[0]
        self.name = getattr(first, "name", "replicas")
        self.separator = getattr(first, "separator", None)
        self.max_concurrent_calls = sum(int(getattr(r, "max_concurrent_calls", 1) or 1) for r in self.replicas)
        self.down_until = [0.0] * len(self.replicas)
        self.assigned: dict[str, int] = {}
        self.served = [0] * len(self.replicas)  # requests each replica answered (tests, diagnostics)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(self.replicas), thread_name_prefix="arbitrage-replica")
        for attr in ("tokenizer", "http", "client"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))
        if not callable(getattr(first, "judge", None)):
            # judging is a capability of the replicas, not of this wrapper: an instance attribute hides the method
            self.__dict__["judge"] = None

    # --- which replica ---------------------------------------------------------------------------------------
    def _up(self) -> list[int]:
        now = self.clock()
        return [i for i in range(len(self.replicas)) if self.down_until[i] <= now]

    def replica_of(self, key: str) -> int:
        with self._lock:
            up = self._up()
            if not up:
                raise BackendError(f"all {len(self.replicas)} replicas of {self.name} are down")
            i = self.assigned.get(key)
            if i is None or i not in up:
                h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
                i = up[h % len(up)]
                self.assigned[key] = i
            return i

    def _mark_down(self, i: int, why: str) -> None:
        with self._lock:
            self.down_until[i] = self.clock() + self.retry_after
            moved = [k for k, j in self.assigned.items() if j == i]
            for k in moved:
                del self.assigned[k]
        log.warning(
            "replica %d of %s is down (%s); its %d problems move to another replica for %.0f s",
            i,
            self.name,
            why,
            len(moved),
            self.retry_after,
        )

    # --- calls ------------------------------------------------------------------------------------------------
    def _call(self, method: str, requests: Sequence) -> list:
        pending = list(range(len(requests)))
        results: list = [None] * len(requests)
        while pending:
            groups: dict[int, list[int]] = {}
            for j in pending:
                groups.setdefault(self.replica_of(requests[j].key), []).append(j)
            futures = {
                i: self._pool.submit(getattr(self.replicas[i], method), [requests[j] for j in idx])
                for i, idx in groups.items()
            }
            pending = []
            for i, fut in futures.items():
                try:
                    out = fut.result()
                except Unreachable as exc:  # this replica is down: its requests go to another one
                    self._mark_down(i, exc.reason or str(exc))
                    pending += groups[i]
                    continue
                for j, r in zip(groups[i], out):
                    results[j] = r
                with self._lock:
                    self.served[i] += len(groups[i])
        return results

    def generate(self, requests):
        return self._call("generate", requests)

    def score(self, requests):
        return self._call("score", requests)

    def predict(self, requests):
        return self._call("predict", requests)

    def judge(self, requests):
        return self._call("judge", requests)

    def release(self, key: str) -> None:
        with self._lock:
            i = self.assigned.pop(key, None)
        if i is not None:
            self.replicas[i].release(key)

    def cancel(self, key: str) -> None:
        i = self.assigned.get(key)
        if i is not None and callable(getattr(self.replicas[i], "cancel", None)):
            self.replicas[i].cancel(key)

    def health(self) -> str:
        """ "up" when every replica answers, "degraded" when some do (requests go to those), "down" when none."""
        from ..protocols import health_of

        states = [health_of(r) for r in self.replicas]
        up = sum(s in ("up", "in-process") for s in states)
        return "up" if up == len(states) else "degraded" if up else "down"

    def close(self) -> None:
        for r in self.replicas:
            if callable(getattr(r, "close", None)):
                r.close()
        self._pool.shutdown(wait=False)


def split_urls(spec: str) -> list[str] | None:
    """`URL1,URL2,...` -> the URLs (None for anything else)."""
    if "," not in spec:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return parts if len(parts) > 1 and all(p.startswith(("http://", "https://")) for p in parts) else None
