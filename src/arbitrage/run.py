"""One run: load problems, skip the finished ones, run the engine, grade and save each problem as it ends,
then write metrics. Re-running the same command resumes where the last one stopped."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
import sys
from dataclasses import dataclass, field

from .engine import Engine, EngineConfig, Models, ProblemResult
from .factory import ModelOptions, build_models
from .policies import make_policy
from .results import METRICS, ResultsFile, check_manifest, compute_metrics, write_json_atomic
from .types import Problem


@dataclass
class RunConfig:
    policy: str
    out: str
    data: str = ""
    threshold: float | None = None
    models: dict = field(default_factory=dict)  # draft/target/prm/router -> path, hub id or URL
    limit: int | None = None
    offset: int = 0
    template: str = "qwen-math-cot"
    question_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    model_options: ModelOptions = field(default_factory=ModelOptions)
    grade_timeout: float = 5.0
    progress: bool = True

    def settings(self) -> dict:
        """What must match for a re-run to continue this run (limit, offset, concurrency and device may change)."""
        e, o = self.engine, self.model_options
        return {"policy": self.policy, "threshold": self.threshold, "data": self.data, "template": self.template,
                "question_field": self.question_field, "answer_field": self.answer_field,
                "id_field": self.id_field,
                "models": {k: v for k, v in sorted(self.models.items()) if v},
                "separator": e.separator, "max_steps": e.max_steps, "max_step_tokens": e.max_step_tokens,
                "max_total_tokens": e.max_total_tokens, "temperature": o.temperature, "top_p": o.top_p,
                "seed": o.seed, "prm_kind": o.prm_kind, "prm_format": o.prm_format}


def result_record(res: ProblemResult, grade, policy: str, threshold: float | None) -> dict:
    p = res.problem
    return {"id": p.id, "question": p.question, "gold": p.gold, "prediction": grade.prediction,
            "correct": bool(grade.correct), "grade_reason": grade.reason, "policy": policy, "threshold": threshold,
            "finish": res.finish, "n_steps": len(res.steps), "latency_s": round(res.latency_s, 6),
            "seconds": {k: round(v, 6) for k, v in res.seconds.items()}, "counts": res.counts,
            "solution": res.solution, "steps": res.records}


def load_run_problems(cfg: RunConfig) -> list[Problem]:
    from .data import load_problems

    tokenizer = None
    if cfg.template == "chat":
        from .backends.hf import load_tokenizer

        spec = cfg.models.get("draft") or cfg.models.get("target")
        tokenizer = load_tokenizer(spec) if spec and not spec.startswith("http") else None
    return load_problems(cfg.data, question_field=cfg.question_field, answer_field=cfg.answer_field,
                         id_field=cfg.id_field, limit=cfg.limit, offset=cfg.offset, template=cfg.template,
                         tokenizer=tokenizer)


def run(cfg: RunConfig, *, models: Models | None = None, problems: list[Problem] | None = None,
        grader=None) -> dict:
    """Run (or resume) and return the metrics of every problem finished in `cfg.out`."""
    from .grading import Grader

    policy = make_policy(cfg.policy, cfg.threshold)
    cfg.threshold = policy.threshold
    check_manifest(cfg.out, cfg.settings())
    store = ResultsFile(cfg.out)
    done = {r["id"] for r in store.load()}
    if problems is None:
        problems = load_run_problems(cfg)
    todo = [p for p in problems if p.id not in done]
    if todo:
        if models is None:
            models = build_models(policy, cfg.models, cfg.model_options)
        own_grader = grader is None
        grader = grader or Grader(timeout=cfg.grade_timeout)
        bar = _progress(len(problems), len(problems) - len(todo), policy.describe(), cfg.progress)
        correct = 0
        # Grading runs on its own thread (the grader itself waits on a worker process), so a problem being
        # graded never holds up the problems still in flight, nor adds to their latency. One thread keeps the
        # appends in order; a failure there is re-raised here.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arbitrage-grade")
        futures = []

        def save(res: ProblemResult) -> None:
            nonlocal correct
            grade = grader.grade(res.solution, res.problem.gold)
            store.append(result_record(res, grade, policy.name, policy.threshold))
            correct += bool(grade.correct)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{correct}/{bar.n - (len(problems) - len(todo))}")

        def on_done(res: ProblemResult) -> None:
            futures.append(pool.submit(save, res))
            if futures[0].done():  # surface a grading or disk error early
                futures.pop(0).result()

        try:
            Engine(policy, models, cfg.engine).run(todo, on_done)
        finally:
            pool.shutdown(wait=True)  # everything finished is graded and saved, even on an error or Ctrl-C
            if bar is not None:
                bar.close()
            if own_grader:
                grader.close()
        for f in futures:
            f.result()
    wanted = {p.id for p in problems}
    records = [r for r in store.load() if r["id"] in wanted]
    metrics = compute_metrics(records, policy.name, policy.threshold)
    metrics["models"] = {k: v for k, v in cfg.models.items() if v}
    metrics["data"] = cfg.data
    write_json_atomic(os.path.join(cfg.out, METRICS), metrics)
    return metrics


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="problem", file=sys.stderr, dynamic_ncols=True)


def replace(cfg: RunConfig, **changes) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
