"""`arbitrage sweep`: policies x thresholds on one dataset with the same models, in one process.

Each point (policy, tau) is an ordinary resumable run in OUT/POLICY-TAU/ (OUT/POLICY/ for a policy without a
threshold), so re-running the same sweep continues where it stopped and finished points cost nothing. The
problems are loaded once and every model once: the union of the roles the unfinished points need is built,
and each point gets the subset its policy uses. Besides the step policies, the point `assisted` runs the
token-level speculative-decoding baseline (transformers assisted generation, baselines/assisted.py) with
the same draft and target. After the points, `sweep_report` writes the frontier, matched-accuracy table,
JSON and plots.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from . import factory
from .baselines.assisted import NAME as ASSISTED
from .baselines.assisted import run_assisted
from .engine import Engine, Models
from .errors import ConfigError
from .policies import POLICIES, THRESHOLD_RANGES, Policy, make_policy
from .results import ResultsFile
from .run import RunConfig, load_run_problems, replace, run
from .types import GenerationRequest, RouteRequest, ScoreRequest

ROLES = ("draft", "target", "prm", "router")
SWEEP_POLICIES = (*POLICIES, ASSISTED)


# --- which points ------------------------------------------------------------------------------------------

def parse_values(text: str) -> list[float]:
    """"0.3,0.5,0.7" or "0.1:0.9:0.2" (start:stop:step, stop included) or a mix: "0,0.1:0.5:0.2"."""
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                start, stop, step = (float(x) for x in part.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                n = int(math.floor((stop - start) / step + 1e-9))
                values += [round(start + i * step, 10) for i in range(n + 1)]
            else:
                values.append(float(part))
        except ValueError:
            raise ConfigError(f"threshold list {text!r}: {part!r} is neither a number nor START:STOP:STEP "
                              f"with STEP > 0 and STOP >= START") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"threshold list {text!r} has no finite values")
    return sorted(set(values))


def parse_thresholds(specs: Sequence[str]) -> dict[str, list[float]]:
    """["rsd=0.3,0.5", "router=0.1:0.9:0.2"] -> {"rsd": [0.3, 0.5], "router": [0.1, 0.3, 0.5, 0.7, 0.9]}."""
    out: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"--thresholds {spec!r}: expected POLICY=V1,V2,... or POLICY=START:STOP:STEP")
        if name not in THRESHOLD_RANGES:
            takes = ", ".join(THRESHOLD_RANGES)
            raise ConfigError(f"--thresholds {spec!r}: policy {name!r} takes no threshold (these do: {takes})")
        out[name] = sorted(set(out.get(name, []) + parse_values(values)))
    return out


def sweep_points(policies: Sequence[str], thresholds: dict[str, list[float]]) -> list[tuple[str, float | None]]:
    """Points in the order the policies were given; a thresholded policy without a list uses its default."""
    unknown = [p for p in policies if p not in SWEEP_POLICIES]
    if unknown:
        raise ConfigError(f"unknown policy {unknown[0]!r}; choose from {', '.join(SWEEP_POLICIES)}")
    stray = [p for p in thresholds if p not in policies]
    if stray:
        raise ConfigError(f"--thresholds names {stray[0]!r}, which is not in --policies")
    points: list[tuple[str, float | None]] = []
    for name in dict.fromkeys(policies):
        if name in THRESHOLD_RANGES:
            taus = thresholds.get(name) or [make_policy(name).threshold]
            points += [(name, float(t)) for t in taus]
        else:
            points.append((name, None))
    return points


def point_dir(policy: str, threshold: float | None) -> str:
    return policy if threshold is None else f"{policy}-{threshold:g}"


# --- running ---------------------------------------------------------------------------------------------

class _Union(Policy):
    """Stands for every point of a sweep when loading models: needs = the union of the points' needs."""

    name = "sweep"

    def __init__(self, needs: set[str]):
        self.needs = frozenset(needs)


def _needs(policy: str, threshold: float | None) -> frozenset[str]:
    return frozenset({"draft", "target"}) if policy == ASSISTED else make_policy(policy, threshold).needs


def _point_config(base: RunConfig, policy: str, threshold: float | None, out_dir: str, progress: bool) -> RunConfig:
    needs = _needs(policy, threshold)
    models = {r: v for r, v in base.models.items() if r in needs and v}
    return replace(base, policy=policy, threshold=threshold, models=models,
                   out=os.path.join(out_dir, point_dir(policy, threshold)), progress=progress)


def _unfinished(cfg: RunConfig, problems) -> int:
    done = {r["id"] for r in ResultsFile(cfg.out).load()} if os.path.exists(cfg.out) else set()
    return sum(p.id not in done for p in problems)


def warm_up(models: Models, grader, problem) -> None:
    """One tiny call to every loaded model and one grading request before any point is timed, so the first
    point does not pay for lazy start-up (kernels, allocator, the grading worker) that later points skip.
    PRM and router read a real draft step (a probe router needs the draft's features)."""
    key = "__sweep_warm_up__"
    grader.grade("\\boxed{1/2}", "0.5")  # not an exact match, so the math-verify worker starts
    step = None
    for role in ("target", "draft"):
        gen = getattr(models, role)
        if gen is not None:
            (g,) = gen.generate([GenerationRequest(key, problem.prompt, [], 2)])
            gen.release(key)
            step = Engine._to_step(role, g) if role == "draft" else step
    if step is not None and models.prm is not None:
        models.prm.score([ScoreRequest(key, problem.question, [], [step])])
        models.prm.release(key)
    if step is not None and models.router is not None:
        models.router.predict([RouteRequest(key, problem.question, [], step)])
        models.router.release(key)


def run_sweep(base: RunConfig, points: list[tuple[str, float | None]], out_dir: str, progress: bool = True,
              *, report: bool = True, plots: bool = True) -> list[dict]:
    """Run every (policy, threshold) point over `base`'s data and models; returns one metrics dict per point
    (each with `dir`, its folder). Problems and models are loaded once for the whole sweep; a point already
    finished loads nothing. With `report`, also writes OUT/sweep.json, OUT/sweep.txt and (with `plots`) the
    PNGs of sweep_report."""
    from .grading import Grader

    if not points:
        raise ConfigError("a sweep needs at least one point")
    for policy, tau in points:  # every threshold checked before anything is loaded
        if policy == ASSISTED:
            if tau is not None:
                raise ConfigError("the assisted baseline takes no threshold")
        else:
            make_policy(policy, tau)
    configs = [_point_config(base, p, t, out_dir, progress) for p, t in points]
    for (policy, _), cfg in zip(points, configs):
        missing = [r for r in sorted(_needs(policy, cfg.threshold)) if r not in cfg.models]
        if missing:
            raise ConfigError(f"point {point_dir(policy, cfg.threshold)} needs " +
                              ", ".join(f"--{m}" for m in missing))
        if policy == ASSISTED and any(factory.is_url(cfg.models[r]) for r in ("draft", "target")):
            raise ConfigError("the assisted baseline runs in-process models only (draft and target are servers)")
    os.makedirs(out_dir, exist_ok=True)
    problems = load_run_problems(base)
    if not problems:
        raise ConfigError(f"no problems in {base.data!r} (with --limit/--offset as given)")
    pending = {id(cfg) for cfg in configs if _unfinished(cfg, problems)}
    needs = set().union(*(_needs(c.policy, c.threshold) for c in configs if id(c) in pending))
    loaded = factory.build_models(_Union(needs), base.models, base.model_options) if needs else Models()
    grader = Grader(timeout=base.grade_timeout)
    results = []
    try:
        if needs:
            warm_up(loaded, grader, problems[0])
        for (policy, _), cfg in zip(points, configs):
            needed = _needs(policy, cfg.threshold)
            subset = Models(**{r: getattr(loaded, r) if r in needed else None for r in ROLES})
            if policy == ASSISTED:
                metrics = run_assisted(cfg, subset.draft, subset.target, problems, grader, progress)
            else:
                metrics = run(cfg, models=subset if id(cfg) in pending else None, problems=problems, grader=grader)
            metrics["dir"] = os.path.relpath(cfg.out, out_dir)
            metrics["concurrency"] = 1 if policy == ASSISTED else cfg.engine.concurrency
            results.append(metrics)
    finally:
        grader.close()
    if report:
        from .sweep_report import write_report

        write_report(results, out_dir, plots=plots)
    return results
