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
from collections.abc import Sequence

from . import factory
from .engine import ROLES, Models
from .errors import ConfigError
from .model_calls import to_step
from .models import roles_to_load
from .policies import make_policy
from .registry import registry
from .results import ResultsFile
from .run import Point, RunConfig, load_run_problems, replace
from .types import GenerationRequest, RouteRequest, ScoreRequest


def sweep_policy_names() -> tuple[str, ...]:
    """Step policies and registered runners (the assisted baseline): everything a sweep point can be."""
    return (*registry().policies, *registry().runners)


# --- which points ------------------------------------------------------------------------------------------


def parse_values(text: str) -> list[float]:
    """ "0.3,0.5,0.7" or "0.1:0.9:0.2" (start:stop:step, stop included) or a mix: "0,0.1:0.5:0.2"."""
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
            raise ConfigError(
                f"threshold list {text!r}: {part!r} is neither a number nor START:STOP:STEP "
                f"with STEP > 0 and STOP >= START"
            ) from None
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
        ranges = registry().thresholded()
        if name not in ranges:
            takes = ", ".join(ranges)
            raise ConfigError(f"--thresholds {spec!r}: policy {name!r} takes no threshold (these do: {takes})")
        out[name] = sorted(set(out.get(name, []) + parse_values(values)))
    return out


def sweep_points(policies: Sequence[str], thresholds: dict[str, list[float]]) -> list[tuple[str, float | None]]:
    """Points in the order the policies were given; a thresholded policy without a list uses its default."""
    names = sweep_policy_names()
    unknown = [p for p in policies if p not in names]
    if unknown:
        raise ConfigError(f"unknown policy {unknown[0]!r}; choose from {', '.join(names)}")
    stray = [p for p in thresholds if p not in policies]
    if stray:
        raise ConfigError(f"--thresholds names {stray[0]!r}, which is not in --policies")
    points: list[tuple[str, float | None]] = []
    ranges = registry().thresholded()
    for name in dict.fromkeys(policies):
        if name in ranges:
            taus = thresholds.get(name)
            if not taus:
                default = make_policy(name).threshold
                assert default is not None  # a thresholded policy has a default threshold
                taus = [default]
            points += [(name, float(t)) for t in taus]
        else:
            points.append((name, None))
    return points


def point_dir(policy: str, threshold: float | None) -> str:
    return policy if threshold is None else f"{policy}-{threshold:g}"


# --- running ---------------------------------------------------------------------------------------------


def _point_config(base: RunConfig, policy: str, threshold: float | None, out_dir: str, progress: bool) -> RunConfig:
    cfg = replace(
        base,
        policy=policy,
        threshold=threshold,
        out=os.path.join(out_dir, point_dir(policy, threshold)),
        progress=progress,
    )
    point = Point(cfg)
    cfg.policy_options = {k: v for k, v in base.policy_options.items() if _takes(policy, k)}
    cfg.models = {r: v for r, v in base.models.items() if v and r in roles_to_load(point.needs)}
    return cfg


def _takes(policy: str, option: str) -> bool:
    cls = registry().policies.get(policy)
    return cls is not None and any(o.name == option for o in cls.options)


def _needs(cfg: RunConfig) -> frozenset[str]:
    return Point(cfg).needs


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
            step = to_step(role, g) if role == "draft" else step
    if step is not None and models.prm is not None:
        models.prm.score([ScoreRequest(key, problem.question, [], [step])])
        models.prm.release(key)
    if step is not None and models.router is not None:
        models.router.predict([RouteRequest(key, problem.question, [], step)])
        models.router.release(key)


def run_sweep(
    base: RunConfig,
    points: list[tuple[str, float | None]],
    out_dir: str,
    progress: bool = True,
    *,
    report: bool = True,
    plots: bool = True,
    interleave: bool = True,
    extra: Sequence[RunConfig] = (),
) -> list[dict]:
    """Run every (policy, threshold) point over `base`'s data and models; returns one metrics dict per point
    (each with `dir`, its folder). `extra`: more points given as whole configs (their own models or options,
    e.g. a router trained for early decisions), run in the same sweep. Problems and each model are loaded once
    for the whole sweep; a point already finished loads nothing.

    With `interleave` (the default) the points take turns problem by problem (in blocks of the engine's
    concurrency), the order rotating from one block to the next, so that a change of the machine's load during
    the sweep lands on every point alike instead of on whichever ran at the time; latency ratios between points
    are then fair. With `report`, also writes OUT/sweep.json, OUT/sweep.txt and (with `plots`) the PNGs."""
    from contextlib import ExitStack

    from .grading import Grader
    from .run import PointRun, Saver, _progress

    if not points and not extra:
        raise ConfigError("a sweep needs at least one point")
    # every threshold and every point's models checked before anything is loaded
    configs = [_point_config(base, p, t, out_dir, progress) for p, t in points] + list(extra)
    for cfg in configs:
        needs = _needs(cfg)
        missing = [r for r in sorted(roles_to_load(needs)) if r not in cfg.models]
        if missing:
            raise ConfigError(
                f"point {point_dir(cfg.policy, cfg.threshold)} needs " + ", ".join(f"--{m}" for m in missing)
            )
    os.makedirs(out_dir, exist_ok=True)
    problems = load_run_problems(base)
    with ExitStack() as stack:
        runs = [stack.enter_context(PointRun(cfg)) for cfg in configs]
        todo = {id(r): len(r.todo(problems)) for r in runs}
        pending = [r for r in runs if todo[id(r)]]
        models = _load_models(pending, base)
        grader = Grader(timeout=base.grade_timeout)
        saver = Saver(grader, own_grader=True)
        saver.bar = _progress(sum(todo.values()), 0, f"sweep ({len(pending)} points)", progress) if pending else None
        try:
            if pending:
                warm_up(_union(models, pending), grader, problems[0])
            block = max(1, base.engine.concurrency) if interleave else len(problems)
            for b, start in enumerate(range(0, len(problems), block)):
                chunk = problems[start : start + block]
                turn = b % len(pending) if pending else 0
                for r in pending[turn:] + pending[:turn]:
                    r.produce(chunk, models[id(r)], saver, n_todo=todo[id(r)])
        finally:
            saver.close()
            if saver.bar is not None:
                saver.bar.close()
        results = []
        for r in runs:
            metrics = r.finish(problems)
            metrics["dir"] = os.path.relpath(r.cfg.out, out_dir)
            metrics["concurrency"] = 1 if r.point.runner is not None else r.cfg.engine.concurrency
            metrics["interleaved"] = interleave
            results.append(metrics)
    if report:
        from .sweep_report import write_report

        write_report(results, out_dir, plots=plots)
    return results


def _load_models(runs, base: RunConfig) -> dict[int, Models]:
    """Each pending point's models, every distinct (role, spec) loaded once. Routers come first: a router that
    reads the draft's hidden state makes every draft compute it."""
    import dataclasses

    wanted: dict[tuple[str, str], None] = {}
    for r in runs:
        for role in _roles(r):
            wanted[(role, r.cfg.models[role])] = None
    loaded: dict[tuple[str, str], object] = {}
    opts = base.model_options
    for role, spec in sorted(wanted, key=lambda rs: rs[0] != "router"):
        built = factory.build_models({role}, {role: spec}, opts, base.engine.separator)
        loaded[(role, spec)] = getattr(built, role)
        if role == "router" and "last_hidden" in getattr(loaded[(role, spec)], "draft_features", ()):
            opts = dataclasses.replace(opts, return_hidden=True)
    out = {}
    for r in runs:
        m = Models.assemble({role: loaded[(role, r.cfg.models[role])] for role in _roles(r)}, r.needs)
        factory.link_speculation(m)
        out[id(r)] = m
    return out


def _roles(run) -> list[str]:
    """The roles whose models a point loads."""
    return sorted(roles_to_load(run.needs))


def _union(models: dict[int, Models], runs) -> Models:
    """One model per role across the points (for the warm-up)."""
    out = Models()
    for r in runs:
        for role in ROLES:
            if getattr(out, role) is None and getattr(models[id(r)], role) is not None:
                setattr(out, role, getattr(models[id(r)], role))
    return out


def merge_point(dirs: Sequence[str], target: str, name: str) -> dict:
    """One run directory from the runs of its shards (`--shard K/N`): checked (the same settings, shards 0..N-1
    once each, no problem twice), joined into `target` with a run.json whose settings are the unsharded run's, so
    the joined run resumes and compares like one run; returns its metrics."""
    import json

    from .records import ProblemRecord
    from .results import METRICS, check_shards, compute_metrics, read_manifest, write_json_atomic

    check_shards(dirs)
    records, seen = [], set()
    for d in dirs:
        for i, line in enumerate(ResultsFile(d).load()):
            if line["id"] in seen:
                raise ConfigError(f"{d}: problem {line['id']!r} is in two shards")
            seen.add(line["id"])
            records.append(ProblemRecord.from_json(line, f"{d}:{i + 1}"))
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "results.jsonl"), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    first = read_manifest(dirs[0])
    assert first is not None  # a point is merged when every shard's directory of it has its run.json
    settings = dict(first["settings"], shard=None)
    sessions = [s for d in dirs for s in (read_manifest(d) or {}).get("sessions", [])]
    write_json_atomic(
        os.path.join(target, "run.json"),
        {"settings": settings, "sessions": sessions, "merged_from": [os.path.abspath(d) for d in dirs]},
    )
    policy, threshold = settings.get("policy"), settings.get("threshold")
    metrics = compute_metrics(records, policy, threshold)
    metrics.update(dir=name, concurrency=(sessions[0].get("concurrency") if sessions else None), shards=len(dirs))
    write_json_atomic(os.path.join(target, METRICS), metrics)
    return metrics


def merge_shards(shard_dirs: Sequence[str], out_dir: str, plots: bool = True) -> list[dict]:
    """One sweep from the sweeps N machines ran on shards of the problems (`arbitrage sweep --shard K/N`): every
    point's results are checked (the same settings, shards 0..N-1 once each) and joined into OUT/POINT/, and the
    report is written over the whole set."""
    if not shard_dirs:
        raise ConfigError("give the shard sweeps' directories")
    names = [sorted(d for d in os.listdir(s) if os.path.isfile(os.path.join(s, d, "run.json"))) for s in shard_dirs]
    if any(n != names[0] for n in names):
        raise ConfigError(
            f"the shard sweeps have different points: {names[0]} in {shard_dirs[0]}, "
            f"{next(n for n in names if n != names[0])} elsewhere"
        )
    merged = [
        merge_point([os.path.join(s, point) for s in shard_dirs], os.path.join(out_dir, point), point)
        for point in names[0]
    ]
    from .sweep_report import write_report

    write_report(merged, out_dir, plots=plots)
    return merged
