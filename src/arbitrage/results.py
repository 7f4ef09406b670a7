"""Results on disk: `results.jsonl` (one line per finished problem, appended and fsynced as each problem
finishes, so a killed run loses nothing finished), `run.json` (the settings, checked on resume, and one entry
per session with the settings that change only speed), `metrics.json` (aggregates computed from every line of
results.jsonl) and `.lock` (held by the run writing to the directory; the OS drops it when that process dies,
even by SIGKILL)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence

from .errors import ConfigError, DataError
from .records import SPECULATION_COUNTS, ProblemRecord

RESULTS, MANIFEST, METRICS, LOCK = "results.jsonl", "run.json", "metrics.json", ".lock"


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_records(path: str | os.PathLike) -> list[ProblemRecord]:
    """The records of a finished run's results.jsonl (or of the one inside a run directory), read only;
    a bad line is an error naming file, line and field."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: not a JSON results line ({exc})") from exc
                records.append(ProblemRecord.from_json(d, f"{path}:{n}"))
    return records


class RunLock:
    """An exclusive OS lock on OUT/.lock for as long as a run writes to OUT. A second run on the same
    directory is refused at once; a run killed by any signal leaves no stale lock (the OS releases it)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOCK)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock (documented)
            return self
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"{os.path.dirname(self.path)} is being written by another arbitrage run "
                f"(pid {holder}); wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (harmless, reused next time)
            self._fd = None


class ResultsFile:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, RESULTS)

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
                if last or all(not x.strip() for x in lines[i + 1 :]):
                    print(
                        f"arbitrage: dropping a torn last line of {self.path} (line {i + 1}); that problem "
                        f"will be run again",
                        file=sys.stderr,
                    )
                    with open(self.path, "r+b") as f:
                        f.truncate(good_end)
                    break
                raise DataError(f"{self.path}:{i + 1}: not a JSON results line ({exc}); fix or remove it") from exc
        ids = [r.get("id") for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(
                f"{self.path}: problem {dup!r} is recorded more than once (two runs wrote here at "
                f"once?); remove the duplicate lines before resuming"
            )
        return records

    def records(self) -> list[ProblemRecord]:
        return [ProblemRecord.from_json(d, f"{self.path}:{i + 1}") for i, d in enumerate(self.load())]

    def append(self, record: dict) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


# --- run.json ------------------------------------------------------------------------------------------------


def read_manifest(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); remove it to start this run afresh") from exc
    return old if "settings" in old else {"settings": old, "sessions": []}  # the layout before sessions


def check_manifest(out_dir: str, settings: dict) -> None:
    """Refuse to continue a run made with other result-changing settings (naming the first that differs)."""
    old = read_manifest(out_dir)
    if old is None:
        return
    before = old["settings"]
    # a setting both runs have comes first: one that only one has is usually a consequence (e.g. sampling makes
    # the speculation settings result-changing), not the change the user made
    diff = sorted(
        (k for k in set(before) | set(settings) if before.get(k) != settings.get(k)),
        key=lambda k: (k not in before or k not in settings, k),
    )
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out_dir} holds a run with other settings ({k}: {before.get(k)!r} there, "
            f"{settings.get(k)!r} now); use another --out or the same settings to resume"
        )


def record_session(out_dir: str, settings: dict, speed: dict, n_todo: int) -> None:
    """Write run.json once a run has really started (models and problems loaded): the settings, and this
    session's speed-only settings appended to those of earlier sessions."""
    old = read_manifest(out_dir) or {"settings": settings, "sessions": []}
    sessions = list(old.get("sessions", [])) + [
        {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "problems_to_run": n_todo, **speed}
    ]
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, MANIFEST), {"settings": settings, "sessions": sessions})


def run_dir_of(path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


def check_shards(paths: Sequence[str]) -> None:
    """Refuse the results of sharded runs (`arbitrage run --shard K/N`) that overlap or leave a shard out.

    Runs are grouped by their settings apart from the shard; within a group the shards must share N and cover
    0..N-1 exactly once. Unsharded runs pass as they are; a mix of sharded and unsharded runs of the same
    settings is refused too (the unsharded run holds the shards' problems already)."""
    groups: dict[str, list[tuple[str, str | None]]] = {}
    for p in paths:
        manifest = read_manifest(run_dir_of(p)) or {"settings": {}}
        settings = dict(manifest["settings"])
        shard = settings.pop("shard", None)
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append((p, shard))
    for members in groups.values():
        shards = [(p, s) for p, s in members if s]
        if not shards:
            continue
        if len(shards) != len(members):
            whole = next(p for p, s in members if not s)
            raise DataError(
                f"{whole} is an unsharded run of the same settings as the sharded runs given with it "
                f"(e.g. {shards[0][0]}): its problems would be counted twice"
            )
        parsed: dict[int, dict[int, list[str]]] = {}
        for p, s in shards:
            k_text, _, n_text = s.partition("/")
            parsed.setdefault(int(n_text), {}).setdefault(int(k_text), []).append(p)
        if len(parsed) > 1:
            raise DataError(f"shards of one run must share N: got N = {sorted(parsed)} ({shards[0][0]} ...)")
        ((n, by_k),) = parsed.items()
        twice = {k: ps for k, ps in by_k.items() if len(ps) > 1}
        if twice:
            k, ps = next(iter(twice.items()))
            raise DataError(f"shard {k}/{n} is given twice ({', '.join(ps)}): overlapping shards")
        missing = sorted(set(range(n)) - set(by_k))
        if missing:
            raise DataError(
                f"missing shard(s) {', '.join(f'{k}/{n}' for k in missing)} of this run (given: "
                f"{', '.join(f'{k}/{n}' for k in sorted(by_k))}); give every shard's directory"
            )


# --- metrics ---------------------------------------------------------------------------------------------------


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def compute_metrics(records: Sequence[ProblemRecord], policy: str | None, threshold: float | None) -> dict:
    """Aggregates over finished problems. escalation_rate counts the steps whose decision escalated (not the
    target's calls: oracle and generate call the target on every step)."""
    records = list(records)
    n = len(records)
    steps = [s for r in records for s in r.steps]
    lat = [r.latency_s for r in records]

    def total(key):
        return sum(r.count(key) for r in records)

    escalated = sum(bool(s.escalated) for s in steps)
    m = {
        "policy": policy,
        "threshold": threshold,
        "n": n,
        "accuracy": sum(bool(r.correct) for r in records) / n if n else 0.0,
        "escalation_rate": escalated / len(steps) if steps else 0.0,
        "steps": len(steps),
        "escalated_steps": escalated,
        "steps_per_problem": len(steps) / n if n else 0.0,
        "draft_tokens_accepted": total("draft_tokens_accepted"),
        "draft_tokens_discarded": total("draft_tokens_discarded"),
        "target_tokens": total("target_tokens"),
        "target_calls": total("target_calls"),
        "draft_calls": total("draft_calls"),
        "judge_calls": total("judge_calls"),  # specreason: target judge passes
        "latency_s_mean": statistics.fmean(lat) if lat else 0.0,
        "latency_s_p50": _percentile(lat, 0.5),
        "latency_s_p90": _percentile(lat, 0.9),
        "finish": {k: sum(r.finish == k for r in records) for k in ("eos", "max_steps", "budget", "stop")},
    }
    m["draft_tokens_discarded_per_problem"] = m["draft_tokens_discarded"] / n if n else 0.0
    for model in ("draft", "target", "prm", "router", "judge"):
        secs = [r.seconds.get(model, 0.0) for r in records]
        m[f"{model}_s"] = sum(secs)  # summed over problems
        m[f"{model}_s_mean"] = statistics.fmean(secs) if secs else 0.0  # per problem
    spec = {k: total(k) for k in SPECULATION_COUNTS}
    target_steps = sum(1 for s in steps if s.speculation is not None)
    if target_steps:  # target-written steps that reused the draft's work
        m["speculation"] = {
            **{k.removeprefix("spec_"): v for k, v in spec.items()},
            "target_steps": target_steps,
            # the share of the rejected proposals' tokens the target kept
            "acceptance_rate": spec["spec_kept"] / spec["spec_proposed"] if spec["spec_proposed"] else None,
            # the share of the draft's in-step proposals the target accepted
            "draft_acceptance_rate": (
                spec["spec_draft_accepted"] / spec["spec_draft_speculated"] if spec["spec_draft_speculated"] else None
            ),
            "target_forwards_per_target_step": spec["spec_target_forwards"] / target_steps,
            "tokens_per_target_forward": (
                sum(s.n_tokens for s in steps if s.speculation is not None) / spec["spec_target_forwards"]
                if spec["spec_target_forwards"]
                else None
            ),
        }
    adv = [s.scores["advantage"] for s in steps if s.scores.get("advantage") is not None]
    if adv:
        m["advantage_positive_rate"] = sum(a > 0 for a in adv) / len(adv)
    return m


def sessions_note(out_dir: str) -> str | None:
    """A warning when a run's problems were produced under different speed settings (their latencies are not
    comparable), else None."""
    old = read_manifest(out_dir)
    if not old:
        return None
    keys = ("concurrency", "parallel", "device", "threads")
    seen = {tuple(s.get(k) for k in keys) for s in old.get("sessions", []) if s.get("problems_to_run")}
    if len(seen) > 1:
        return (
            f"{out_dir}: problems ran in sessions with different speed settings ({', '.join(keys)}: "
            f"{sorted(seen, key=str)}); their latencies are not comparable"
        )
    return None
