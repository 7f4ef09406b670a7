"""Lanes: models that share hardware. The engine runs every model on a lane (protocols.lane_of); calls on one
lane never run at once beyond its capacity, calls on different lanes (two servers, two GPUs) run together."""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor

from .protocols import Model


class Lane:
    """Models that share hardware. `capacity`: calls it takes at once (1 for a device; a server batches
    concurrent requests itself, so its lane takes as many calls as its client allows in flight)."""

    def __init__(self, key: Hashable, roles: list[str], capacity: int = 1):
        self.key, self.roles, self.capacity = key, roles, max(1, capacity)
        self.in_flight = 0
        self.turn = 0
        self.releases: list[tuple[Model, str]] = []
        self.executor: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> bool:
        return self.in_flight >= self.capacity

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def submit(self, fn):
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                max_workers=self.capacity, thread_name_prefix=f"arbitrage-lane-{self.roles[0]}"
            )
        return self.executor.submit(fn)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
