"""Shards of a problem set: "K/N" picks the problems whose id hashes to K, so runs on N machines split the work
without coordinating and a shard keeps its problems when the data grows."""

from __future__ import annotations

import hashlib

from .errors import ConfigError
from .types import Problem


def shard_of(problems: list[Problem], shard: str) -> list[Problem]:
    """The problems of shard "K/N" (0 <= K < N): those whose id hashes to K, so a shard keeps its problems when
    the data file grows or is reordered, and N shards together hold every problem exactly once."""
    k, n = parse_shard(shard)
    return [p for p in problems if shard_index(p.id, n) == k]


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        k_text, n_text = shard.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard {shard!r}: expected K/N with 0 <= K < N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {shard!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return k, n


def shard_index(problem_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(str(problem_id).encode()).digest()[:8], "big") % n
