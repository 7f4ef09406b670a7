"""`arbitrage calibrate`: the threshold to deploy, with a stated guarantee on the accuracy it may cost
(docs/calibration.md). Runs target-only and every candidate (policy, tau) on the calibration problems through
the sweep (resumable, interleaved, --shard like everything else), then selects with Learn-then-Test
(arbitrage.calibrate) and writes OUT/calibration.json, which `arbitrage run --calibration` and
`arbitrage serve --calibration` read."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .cli_args import (
    add_data_arguments,
    add_decoding_arguments,
    add_loader_option_arguments,
    add_model_arguments,
    add_policy_option_arguments,
    add_ray_arguments,
    config_from_args,
    quiet_libraries,
)
from .errors import ConfigError

CALIBRATION = "calibration.json"

EPILOG = """\
example (the testbed's shipped models):
  arbitrage calibrate --draft testbed:draft --target testbed:target --prm testbed-checker:0.1:0.1 \\
      --data testbed:validation:300 --policies rsd,confidence --max-loss 0.02 --delta 0.1 --out runs/cal
  arbitrage run --calibration runs/cal/calibration.json --draft testbed:draft --target testbed:target \\
      --prm testbed-checker:0.1:0.1 --data testbed:test:500 --out runs/deployed

Guarantee: with probability >= 1 - delta over the draw of the calibration problems, the chosen (policy, tau)
loses at most --max-loss accuracy against target-only on problems exchangeable with them (the same
distribution), with the same models and decoding settings. Each policy's thresholds are tested from the
safest to the cheapest (fixed-sequence testing at delta / number of policies); the cheapest certified one is
chosen. Grids: --thresholds POLICY=... first, then --grid-from (thresholds set on training-side steps by
`arbitrage router thresholds --out-json`), else a fixed ladder over each policy's range (see
docs/calibration.md). Exit status 1 when nothing is certifiable (calibration.json still lists every test).
"""


def _policies(args, roles: set[str]) -> list[str]:
    from .calibrate import default_policies, direction
    from .registry import registry

    ranges = registry().thresholded()
    if args.policies:
        names = list(dict.fromkeys(p.strip() for p in args.policies.split(",") if p.strip()))
        have = roles | ({"judge"} if "target" in roles else set())
        for name in names:
            if name not in ranges:
                raise ConfigError(
                    f"--policies: {name!r} is not a thresholded policy; calibrate chooses thresholds "
                    f"of: {', '.join(ranges)}"
                )
            missing = sorted(registry().policies[name].needs - have)
            if missing:
                raise ConfigError(f"policy {name} needs " + ", ".join(f"--{m}" for m in missing))
            direction(name)
    else:
        names = default_policies(roles)
        if not names:
            raise ConfigError(
                "the models given allow no thresholded policy (give --draft and --target, and --prm "
                "or --router for rsd or router)"
            )
    return names


def _grid_file(path: str) -> dict[str, list[float]]:
    """Thresholds per policy from `arbitrage router thresholds --out-json` (POLICY: [{rate, tau, ...}]) or a file
    with a "thresholds" map (POLICY: [tau, ...]), e.g. the demo's thresholds.json."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--grid-from {path}: cannot read it as JSON ({exc})") from None
    source = data.get("thresholds") if isinstance(data.get("thresholds"), dict) else data
    out: dict[str, list[float]] = {}
    for policy, items in source.items():
        if not isinstance(items, list):
            continue
        taus = [
            float(x["tau"]) if isinstance(x, dict) else float(x)
            for x in items
            if isinstance(x, (int, float)) or (isinstance(x, dict) and "tau" in x)
        ]
        if taus:
            out[policy] = sorted(set(taus))
    return out


def _grids(args, policies: list[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    from .calibrate import default_grid
    from .registry import registry
    from .sweep import parse_thresholds

    given = parse_thresholds(args.thresholds)
    stray = [p for p in given if p not in policies]
    if stray:
        raise ConfigError(
            f"--thresholds names {stray[0]!r}, which is not among the candidate policies ({', '.join(policies)})"
        )
    from_file: dict[str, list[float]] = {}
    for path in args.grid_from:
        for policy, taus in _grid_file(path).items():
            from_file[policy] = sorted(set(from_file.get(policy, []) + taus))
    grids, sources = {}, {}
    for policy in policies:
        lo, hi = registry().thresholded()[policy]
        if policy in given:
            grids[policy], sources[policy] = given[policy], "--thresholds"
        elif from_file.get(policy):
            grids[policy], sources[policy] = [t for t in from_file[policy] if lo <= t <= hi], "--grid-from"
        else:
            grids[policy], sources[policy] = default_grid(policy), "fixed ladder"
        if not grids[policy]:
            raise ConfigError(f"policy {policy}: no threshold in its range [{lo:g}, {hi:g}]")
    return grids, sources


def _interval(num, den) -> dict | None:
    from .evidence import paired_ratio_ci

    try:
        r = paired_ratio_ci(list(map(float, num)), list(map(float, den)))
    except (ValueError, ZeroDivisionError):
        return None
    return {"value": r["ratio"], "ci95": r["ci95"], "n_boot": r["n_boot"]}


def _cli_options(models: dict, policy: str) -> str:
    from .registry import registry

    needs = registry().policies[policy].needs
    roles = [r for r in ("draft", "target", "prm", "router") if r in needs or (r == "target" and "judge" in needs)]
    return " ".join(f"--{r} {models[r]}" for r in roles if models.get(r))


def cmd_calibrate(args) -> int:
    from .calibrate import METHODS, NOTHING_CERTIFIABLE, Outcomes, can_certify, min_problems, select
    from .results import read_records, write_json_atomic
    from .run import load_run_problems
    from .sweep import point_dir, run_sweep

    eps, delta = args.max_loss, args.delta
    if not (math.isfinite(eps) and 0 <= eps < 1):
        raise ConfigError(
            f"--max-loss must lie in [0, 1) (accuracy points as a fraction: 0.01 is one point), got {eps:g}"
        )
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise ConfigError(f"--delta must lie in (0, 1), got {delta:g}")
    if args.p_value not in METHODS:
        raise ConfigError(f"--p-value must be one of {', '.join(METHODS)}")
    if not args.target:
        raise ConfigError("calibrate measures the loss against target-only: give --target")
    roles = {r for r in ("draft", "target", "prm", "router") if getattr(args, r)}
    policies = _policies(args, roles)
    grids, sources = _grids(args, policies)
    base = config_from_args(args, policy="target", out=args.out)
    quiet_libraries(args.quiet)
    problems = load_run_problems(base)
    ids = [p.id for p in problems]
    n, level = len(ids), delta / len(policies)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, CALIBRATION)
    header = {
        "epsilon": eps,
        "delta": delta,
        "method": args.p_value,
        "n": n,
        "level_per_policy": level,
        "models": {k: v for k, v in base.models.items() if v},
        "data": {"data": base.data, "limit": base.limit, "offset": base.offset, "shard": base.shard},
        "settings": {k: v for k, v in base.settings().items() if k not in ("policy", "threshold", "out")},
        "grids": {p: {"thresholds": grids[p], "source": sources[p]} for p in policies},
        "guarantee": (
            f"with probability >= {1 - delta:g} over the draw of the calibration problems, the "
            f"chosen point's expected accuracy loss against target-only is <= {eps:g} on problems "
            f"exchangeable with them, with these models and settings"
        ),
    }
    needed = min_problems(eps, level, args.p_value) if eps > 0 else None
    if not base.shard and not can_certify(n, eps, level, args.p_value):
        reason = (
            f"{NOTHING_CERTIFIABLE}: {n} calibration problems cannot certify a loss <= {eps:g} at level "
            f"{level:g} (delta {delta:g} over {len(policies)} polic{'y' if len(policies) == 1 else 'ies'}) "
            f"whatever the outcomes; a point as accurate as target-only on every problem would need at "
            f"least {needed if needed else 'more than 100000'} (with --p-value {args.p_value})"
        )
        write_json_atomic(
            path, {**header, "chosen": None, "reason": reason, "min_problems": needed, "policies": {}, "tests": []}
        )
        print(f"arbitrage calibrate: {reason}; nothing was run. Wrote {path}", file=sys.stderr)
        return 1
    points: list[tuple[str, float | None]] = [("target", None)] + [(p, t) for p in policies for t in grids[p]]
    if not args.quiet:
        print(
            f"calibrate: {n} problems, target-only and {len(points) - 1} candidates ("
            + "; ".join(f"{p}: {len(grids[p])} from {sources[p]}" for p in policies)
            + ")",
            flush=True,
        )
    if getattr(args, "ray", None):  # the points' shards as Ray tasks, joined (checked) into --out, then selected
        from .cli_args import ray_shards
        from .sweep import merge_shards

        merge_shards(ray_shards(args, args.out), args.out, plots=not args.no_plots)
    run_sweep(base, points, args.out, progress=not args.quiet, plots=not args.no_plots)  # after --ray: all finished
    if base.shard:  # one machine's share: the selection needs every calibration problem
        print(
            f"calibrate: shard {base.shard} of the calibration points is done in {args.out}. When every shard "
            f"is, join them with `arbitrage sweep-merge SHARD_OUT... --out OUT` and run this command again "
            f"without --shard and with --out OUT: it finds every point finished and selects over all problems."
        )
        return 0

    def outcomes(policy, tau):
        d = os.path.join(args.out, point_dir(policy, tau))
        return Outcomes.of(read_records(d), ids, policy, tau, label=point_dir(policy, tau))

    target = outcomes("target", None)
    candidates = [outcomes(p, t) for p in policies for t in grids[p]]
    sel = select(target, candidates, eps, delta, args.p_value, bounds=True)
    report = {**header, **sel.to_json()}
    chosen = None
    if sel.chosen is not None:
        c = next(x for x in candidates if x.policy == sel.chosen.policy and x.threshold == sel.chosen.threshold)
        chosen = {
            **sel.chosen.to_json(),
            "dir": point_dir(c.policy, c.threshold),
            "latency_s_mean_ci": _interval(c.latency, [1.0] * n),
            "speedup_vs_target": _interval(target.latency, c.latency),
            "escalation_rate_ci": _interval(c.escalated, c.steps),
            "run_options": f"--policy {c.policy} --threshold {c.threshold:g}",
        }
        report["chosen"] = chosen
    write_json_atomic(path, report)
    _print(sel, chosen, path, base.models, args.out)
    if chosen is None:
        print(f"arbitrage calibrate: {sel.reason}", file=sys.stderr)
        return 1
    return 0


def _print(sel, chosen, path, models, out) -> None:
    print(
        f"target-only: accuracy {sel.target['accuracy']:.3f}, mean latency {sel.target['latency_s_mean']:.3f} s "
        f"on {sel.n} calibration problems"
    )
    print(
        f"tests of H0: loss > {sel.epsilon:g}, each policy at level {sel.level:g} (delta {sel.delta:g}), "
        f"p-value {sel.method}, safest threshold first:"
    )
    head = f"{'point':<24}{'acc':>7}{'loss':>8}{'b':>5}{'c':>5}{'p':>10}{'bound':>9}{'lat_s':>8}{'esc':>6}  result"
    print(head)
    print("-" * len(head))
    for t in sel.tests:
        p = "-" if t.p_value is None else f"{t.p_value:.2e}"
        bound = "" if t.bound is None else f"{t.bound:+.3f}"
        result = "certified" if t.certified else ("not tested" if t.p_value is None else "not certified: stop")
        print(
            f"{t.label:<24}{t.accuracy:>7.3f}{t.loss:>+8.3f}{t.n_plus:>5}{t.n_minus:>5}{p:>10}{bound:>9}"
            f"{t.latency_s_mean:>8.3f}{t.escalation_rate:>6.2f}  {result}"
        )
    if chosen is None:
        print(f"wrote {path}")
        return
    sp = chosen.get("speedup_vs_target") or {}
    ci = sp.get("ci95")
    print(
        f"chosen: {chosen['policy']} at tau {chosen['threshold']:g}: loss {chosen['loss']:+.3f} on calibration, "
        f"certified <= {sel.epsilon:g} (p {chosen['p_value']:.2e} <= {sel.level:g}); "
        f"{sp.get('value', float('nan')):.2f}x target-only's speed"
        + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
        + f", escalation rate {chosen['escalation_rate']:.2f}"
    )
    opts = _cli_options(models, chosen["policy"])
    print(f"run:   arbitrage run --calibration {path} {opts} --data DATA --out OUT")
    print(f"serve: arbitrage serve --calibration {path} {opts}")
    print(f"       (the same as {chosen['run_options']}; keep the decoding settings of this calibration)")
    print(f"wrote {path}")


def register(sub) -> None:
    from .calibrate import METHODS
    from .registry import registry

    ranges = registry().thresholded()
    p = sub.add_parser(
        "calibrate",
        help="choose the threshold to deploy, with a guarantee on the accuracy it may cost against target-only",
        description="Run target-only and candidate (policy, tau) points on calibration problems "
        "(through the sweep: resumable, interleaved, --shard), then choose the cheapest "
        "tau whose accuracy loss against target-only is certified <= --max-loss with "
        "probability >= 1 - --delta (Learn-then-Test with fixed-sequence testing). "
        "Writes OUT/calibration.json for `run --calibration` and `serve --calibration`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--max-loss",
        type=float,
        required=True,
        metavar="EPSILON",
        help="the accuracy the deployed point may lose against target-only, as a fraction (0.01: one accuracy point)",
    )
    p.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="the guarantee fails with probability at most delta over the draw of the calibration "
        "problems (default: %(default)s)",
    )
    p.add_argument(
        "--policies",
        help="comma-separated candidates from: " + ", ".join(ranges) + " (default: every thresholded "
        "policy the models given allow, except the oracle)",
    )
    p.add_argument(
        "--thresholds",
        action="append",
        default=[],
        metavar="POLICY=VALUES",
        help="one policy's grid: 0.3,0.5,0.7 or 0.1:0.9:0.2 (repeat per policy)",
    )
    p.add_argument(
        "--grid-from",
        action="append",
        default=[],
        metavar="JSON",
        help="thresholds set on training-side steps (the file `arbitrage router thresholds --out-json` "
        'writes, or one with a "thresholds" map) for the policies without --thresholds',
    )
    p.add_argument(
        "--p-value",
        default="exact",
        choices=METHODS,
        help="exact: exact unconditional test of the paired loss (default); hb: Hoeffding-Bentkus on "
        "the loss mapped to [0, 1] (far more conservative)",
    )
    p.add_argument("--out", required=True, help="output directory (one sub-directory per point, calibration.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the sweep's PNG plots")
    add_model_arguments(p)
    add_loader_option_arguments(p)
    add_data_arguments(p)
    add_decoding_arguments(p)
    add_policy_option_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_calibrate, threshold=None, policy=None, calibration=None)
