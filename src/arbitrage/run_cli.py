"""`arbitrage run`: one policy over one dataset."""

from __future__ import annotations

import json

from .cli_args import (
    _threshold_help,
    add_data_arguments,
    add_decoding_arguments,
    add_loader_option_arguments,
    add_model_arguments,
    add_policy_option_arguments,
    add_ray_arguments,
    config_from_args,
    quiet_libraries,
)
from .run import run


def cmd_run(args) -> int:
    quiet_libraries(args.quiet)
    cfg = config_from_args(args)
    if args.ray:  # shards as Ray tasks, joined into --out (checked like --shard runs)
        from .cli_args import ray_shards
        from .results import RunLock
        from .sweep import merge_point

        dirs = ray_shards(args, cfg.out)
        with RunLock(cfg.out):
            metrics = merge_point(dirs, cfg.out, ".")
    else:
        metrics = run(cfg)
    keys = (
        "policy",
        "threshold",
        "n",
        "accuracy",
        "escalation_rate",
        "target_calls",
        "latency_s_mean",
        "latency_s_p50",
    )
    print(json.dumps({k: metrics[k] for k in keys}))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run one policy over a dataset",
        description="Run one policy over a dataset; writes OUT/results.jsonl and OUT/metrics.json. "
        "Re-running the same command resumes.",
    )
    from .registry import registry

    policies = registry().policies
    p.add_argument(
        "--policy",
        choices=list(policies) + list(registry().runners),
        help="; ".join(f"{n}: {c.summary}" for n, c in policies.items()) + " (required unless --calibration gives it)",
    )
    p.add_argument("--threshold", type=float, help=_threshold_help())
    p.add_argument(
        "--calibration",
        metavar="JSON",
        help="take the policy and threshold from the calibration.json `arbitrage calibrate` wrote (an "
        "explicit --policy or --threshold must agree with it)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(p)
    add_loader_option_arguments(p)
    add_data_arguments(p)
    add_decoding_arguments(p)
    add_policy_option_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_run)
