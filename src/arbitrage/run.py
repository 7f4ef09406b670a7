"""One run: load problems, skip the finished ones, produce the rest, grade and save each problem as it ends,
then write metrics. Re-running the same command resumes where the last one stopped.

The loop here is the only one: the step engine produces results for step policies, and a registered runner
(the assisted-generation baseline) for anything else; both hand back `ProblemResult`s through `on_done`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .engine import Engine, EngineConfig, Models, ProblemResult
from .errors import ConfigError
from .factory import ModelOptions, build_models
from .records import ProblemRecord
from .registry import registry
from .results import (
    METRICS,
    ResultsFile,
    RunLock,
    check_manifest,
    compute_metrics,
    record_session,
    sessions_note,
    write_json_atomic,
)
from .types import Problem


@dataclass
class RunConfig:
    policy: str
    out: str
    data: str = ""
    threshold: float | None = None
    policy_options: dict = field(default_factory=dict)  # e.g. decide_after (router), target_samples (generate)
    models: dict = field(default_factory=dict)  # draft/target/prm/router -> path, hub id or URL
    limit: int | None = None
    offset: int = 0
    shard: str | None = None  # "K/N": this run's share of the problems (shards.shard_of)
    template: str | None = None  # None: the data's own prompts when it has them, else qwen-math-cot
    question_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    model_options: ModelOptions = field(default_factory=ModelOptions)
    grade_timeout: float = 5.0
    progress: bool = True

    # Which problems run, where they go, and how they are shown: free to change between sessions of one run.
    FREE = frozenset({"out", "limit", "offset", "progress", "grade_timeout"})
    # Change how fast problems run, not what they produce: recorded per session in run.json (a resumed run with
    # other values is allowed, and its metrics say that latencies come from mixed sessions).
    SPEED_ONLY = frozenset(
        {
            "concurrency",
            "parallel",
            "device",
            "threads",
            "server_concurrency",
            "fast_decode",
            "static_slots",
            "static_len",
        }
    )
    # Reusing the draft's work gives the target's own greedy steps token for token, so it only changes speed
    # when decoding is greedy; when sampling, it draws other (equally distributed) steps, so it changes results.
    SPEED_ONLY_WHEN_GREEDY = frozenset({"verify", "gamma"})

    def _speed_only(self) -> frozenset[str]:
        greedy = self.model_options.temperature == 0
        return self.SPEED_ONLY | (self.SPEED_ONLY_WHEN_GREEDY if greedy else frozenset())

    def settings(self) -> dict:
        """Everything that must match for a re-run to continue this run, derived from the config's fields (so a
        new field is checked unless it is declared FREE or SPEED_ONLY)."""
        out = {}
        speed = self._speed_only()
        for f in dataclasses.fields(self):
            if f.name in self.FREE or f.name in speed:
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for g in dataclasses.fields(value):
                    if g.name not in speed:
                        out[g.name] = _plain(getattr(value, g.name))
            else:
                out[f.name] = _plain(value)
        out["models"] = {k: v for k, v in sorted(self.models.items()) if v}
        return out

    def speed_settings(self) -> dict:
        """This session's SPEED_ONLY values (recorded per session in run.json)."""
        speed = self._speed_only()
        return {
            g.name: _plain(getattr(obj, g.name))
            for obj in (self.engine, self.model_options)
            for g in dataclasses.fields(obj)
            if g.name in speed
        }


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in sorted(v.items()) if x is not None}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def to_record(res: ProblemResult, grade, policy: str, threshold: float | None) -> ProblemRecord:
    p = res.problem
    return ProblemRecord(
        id=p.id,
        question=p.question,
        gold=p.gold,
        prediction=grade.prediction,
        correct=bool(grade.correct),
        grade_reason=grade.reason,
        policy=policy,
        threshold=threshold,
        finish=res.finish,
        latency_s=res.latency_s,
        seconds=res.seconds,
        counts=res.counts,
        solution=res.solution,
        steps=res.records,
    )


def load_run_problems(cfg: RunConfig) -> list[Problem]:
    from .data import load_problems

    tokenizer = None
    if cfg.template == "chat":
        from .factory import load_chat_tokenizer

        tokenizer = load_chat_tokenizer(cfg.models)
    selected = load_problems(
        cfg.data,
        question_field=cfg.question_field,
        answer_field=cfg.answer_field,
        id_field=cfg.id_field,
        limit=cfg.limit,
        offset=cfg.offset,
        template=cfg.template,
        tokenizer=tokenizer,
        shard=cfg.shard,
    )
    if not selected:
        total = len(
            load_problems(
                cfg.data,
                question_field=cfg.question_field,
                answer_field=cfg.answer_field,
                id_field=cfg.id_field,
                template=cfg.template,
                tokenizer=tokenizer,
                shard=cfg.shard,
            )
        )
        where = f" of shard {cfg.shard}" if cfg.shard else ""
        raise ConfigError(f"--offset {cfg.offset} selects no problem{where}: {cfg.data!r} has {total} problems{where}")
    return selected


class Producer(Protocol):
    """What runs a point's problems: the engine, or what a registered runner builds."""

    def run(self, problems: list[Problem], on_done: Callable[[ProblemResult], None]) -> None: ...


class Point:
    """What `cfg.policy` names: a step policy (run by the engine) or a registered runner (e.g. assisted)."""

    def __init__(self, cfg: RunConfig):
        self.runner = registry().runner(cfg.policy)
        if self.runner is not None:
            if cfg.threshold is not None:
                raise ConfigError(f"{cfg.policy!r} takes no --threshold")
            if self.runner.check is not None:
                self.runner.check(cfg)
            self.name, self.threshold, self.needs, self.policy = cfg.policy, None, self.runner.needs, None
        else:
            from .policies import make_policy

            self.policy = make_policy(cfg.policy, cfg.threshold, **cfg.policy_options)
            self.name, self.threshold, self.needs = self.policy.name, self.policy.threshold, self.policy.needs

    def describe(self) -> str:
        return self.policy.describe() if self.policy is not None else self.name

    def producer(self, cfg: RunConfig, models: Models) -> Producer:
        if self.runner is not None:
            return self.runner.build(cfg, models)
        assert self.policy is not None  # a step policy, when no runner has the name
        return Engine(self.policy, models, cfg.engine)


def run(cfg: RunConfig, *, models: Models | None = None, problems: list[Problem] | None = None, grader=None) -> dict:
    """Run (or resume) and return the metrics of every problem finished in `cfg.out`."""
    from .grading import Grader

    with PointRun(cfg) as point:
        if problems is None:
            problems = load_run_problems(cfg)
        todo = point.todo(problems)
        if todo:
            if models is None:
                models = build_models(point.needs, cfg.models, cfg.model_options, cfg.engine.separator)
            own = grader is None
            saver = Saver(grader or Grader(timeout=cfg.grade_timeout), own_grader=own)
            bar = _progress(len(problems), len(problems) - len(todo), point.describe(), cfg.progress)
            saver.bar = bar
            try:
                point.produce(todo, models, saver)
            finally:
                saver.close()
                if bar is not None:
                    bar.close()
        return point.finish(problems)


class PointRun:
    """One run directory, open: its lock held, its settings checked against run.json, its finished problems
    known. `produce` runs some of the rest (any number of times, e.g. one block at a time when a sweep
    interleaves its points problem by problem); `finish` writes and returns the metrics."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.point = Point(cfg)
        cfg.threshold = self.point.threshold
        self.needs = self.point.needs
        self.settings = cfg.settings()
        self._lock = RunLock(cfg.out)
        self.store: ResultsFile | None = None
        self.done: set[str] = set()
        self.producer: Producer | None = None
        self.started = False

    def __enter__(self) -> PointRun:
        self._lock.__enter__()
        try:
            check_manifest(self.cfg.out, self.settings)
            self.store = ResultsFile(self.cfg.out)
            self.done = {r["id"] for r in self.store.load()}
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def describe(self) -> str:
        return self.point.describe()

    def todo(self, problems: list[Problem]) -> list[Problem]:
        return [p for p in problems if p.id not in self.done]

    def produce(self, problems: list[Problem], models: Models, saver: Saver, n_todo: int | None = None) -> None:
        """Run these (unfinished) problems; each is graded and appended as it ends. `n_todo`: how many this
        session will run in all (recorded in run.json when the first block starts)."""
        todo = self.todo(problems)
        if not todo:
            return
        if self.producer is None:
            self.producer = self.point.producer(self.cfg, models)
        if not self.started:  # the run has really started: run.json is written now, not before
            record_session(self.cfg.out, self.settings, self.cfg.speed_settings(), n_todo or len(todo))
            self.started = True
        assert self.store is not None  # opened by __enter__
        point, store = self.point, self.store

        def on_done(res: ProblemResult) -> None:
            saver.submit(res, lambda grade: store.append(to_record(res, grade, point.name, point.threshold).to_json()))
            self.done.add(res.problem.id)

        try:
            self.producer.run(todo, on_done)
        finally:
            saver.drain()

    def finish(self, problems: list[Problem]) -> dict:
        cfg, point = self.cfg, self.point
        wanted = {p.id for p in problems}
        assert self.store is not None  # opened by __enter__
        records = [r for r in self.store.records() if r.id in wanted]
        metrics = compute_metrics(records, point.name, point.threshold)
        if point.runner is not None and point.runner.metrics is not None:
            point.runner.metrics(metrics)
        metrics["models"] = {k: v for k, v in cfg.models.items() if v}
        metrics["data"] = cfg.data
        note = sessions_note(cfg.out)
        if note:
            metrics["note"] = note
            print(f"arbitrage: warning: {note}", file=sys.stderr)
        write_json_atomic(os.path.join(cfg.out, METRICS), metrics)
        return metrics


class Saver:
    """Grades finished problems and saves them, on one thread of its own: a problem being graded never holds
    up the problems still in flight, nor adds to their latency, and one thread keeps the appends in order. A
    failure there is re-raised at the next `submit` or at `drain`."""

    def __init__(self, grader, own_grader: bool = False):
        self.grader, self.own_grader = grader, own_grader
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arbitrage-grade")
        self.futures: list = []
        self.bar = None
        self.correct = self.graded = 0

    def submit(self, res: ProblemResult, save) -> None:
        def work():
            grade = self.grader.grade(res.solution, res.problem.gold)
            save(grade)
            self.correct += bool(grade.correct)
            self.graded += 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(acc=f"{self.correct}/{self.graded}")

        self.futures.append(self.pool.submit(work))
        if self.futures[0].done():  # surface a grading or disk error early
            self.futures.pop(0).result()

    def drain(self) -> None:
        """Wait until everything submitted is graded and saved (even after an error or Ctrl-C)."""
        futures, self.futures = self.futures, []
        for f in futures:
            f.result()

    def close(self) -> None:
        try:
            self.pool.shutdown(wait=True)
            self.drain()
        finally:
            if self.own_grader:
                self.grader.close()


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="problem", file=sys.stderr, dynamic_ncols=True)


def replace(cfg: RunConfig, **changes) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
