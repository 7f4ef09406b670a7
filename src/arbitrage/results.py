"""Results on disk: `results.jsonl` (one line per finished problem, appended and fsynced as each problem
finishes, so a killed run loses nothing finished), `run.json` (the settings, checked on resume) and
`metrics.json` (aggregates computed from every line of results.jsonl)."""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Iterable

from .errors import ConfigError, DataError

RESULTS, MANIFEST, METRICS = "results.jsonl", "run.json", "metrics.json"


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a finished run's results.jsonl (or of the one inside a run directory), read only;
    a bad line is an error naming file and line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: not a JSON results line ({exc})") from exc
    return records


class ResultsFile:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, RESULTS)
        os.makedirs(out_dir, exist_ok=True)

    def load(self) -> list[dict]:
        """Every finished problem so far. A torn last line (the run was killed mid-write) is cut off;
        a bad line elsewhere is an error naming it, never silently dropped."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        records, good_end = [], 0
        for i, raw in enumerate(lines):
            last = i == len(lines) - 1
            if not raw.strip():
                good_end += len(raw) + (0 if last else 1)
                continue
            try:
                if last:  # no newline after it: the write was torn
                    raise ValueError("unterminated line")
                records.append(json.loads(raw))
                good_end += len(raw) + 1
            except ValueError as exc:
                if last or all(not x.strip() for x in lines[i + 1:]):
                    print(f"arbitrage: dropping a torn last line of {self.path} (line {i + 1}); that problem "
                          f"will be run again", file=sys.stderr)
                    with open(self.path, "r+b") as f:
                        f.truncate(good_end)
                    break
                raise DataError(f"{self.path}:{i + 1}: not a JSON results line ({exc}); fix or remove it") from exc
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def check_manifest(out_dir: str, settings: dict) -> None:
    """Record the run's settings, or check that a resumed run uses the same ones."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"{out_dir} holds a run with other settings ({k}: {old.get(k)!r} there, "
                              f"{settings.get(k)!r} now); use another --out or the same settings to resume")
        return
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(path, settings)


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def compute_metrics(records: Iterable[dict], policy: str, threshold: float | None) -> dict:
    records = list(records)
    n = len(records)
    steps = [s for r in records for s in r["steps"]]
    lat = [r["latency_s"] for r in records]

    def total(key):
        return sum(r["counts"][key] for r in records)

    m = {
        "policy": policy, "threshold": threshold, "n": n,
        "accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0,
        "escalation_rate": sum(bool(s["escalated"]) for s in steps) / len(steps) if steps else 0.0,
        "steps": len(steps), "escalated_steps": sum(bool(s["escalated"]) for s in steps),
        "steps_per_problem": len(steps) / n if n else 0.0,
        "draft_tokens_accepted": total("draft_tokens_accepted"),
        "draft_tokens_discarded": total("draft_tokens_discarded"),
        "target_tokens": total("target_tokens"),
        "target_calls": total("target_calls"),
        "draft_calls": total("draft_calls"),
        "judge_calls": sum(r["counts"].get("judge_calls", 0) for r in records),  # specreason: target judge passes
        "latency_s_mean": statistics.fmean(lat) if lat else 0.0,
        "latency_s_p50": _percentile(lat, 0.5),
        "latency_s_p90": _percentile(lat, 0.9),
        "finish": {k: sum(r["finish"] == k for r in records) for k in ("eos", "max_steps", "budget")},
    }
    for model in ("draft", "target", "prm", "router"):
        secs = [r["seconds"].get(model, 0.0) for r in records]
        m[f"{model}_s"] = sum(secs)                    # summed over problems
        m[f"{model}_s_mean"] = statistics.fmean(secs) if secs else 0.0  # per problem
    if any("advantage" in s["scores"] for s in steps):
        adv = [s["scores"]["advantage"] for s in steps if "advantage" in s["scores"]]
        m["advantage_positive_rate"] = sum(a > 0 for a in adv) / len(adv)
    return m
