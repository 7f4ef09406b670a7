"""`arbitrage sweep`: several policies and thresholds over one dataset with the same models."""

from __future__ import annotations

import os

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
from .sweep import parse_thresholds, point_dir, run_sweep, sweep_points, sweep_policy_names

EPILOG = """\
examples:
  arbitrage sweep --policies draft,target,rsd,router,oracle,specreason,assisted \\
      --thresholds rsd=0.3,0.5,0.7,0.9 --thresholds router=0.1:0.9:0.2 --thresholds specreason=5,7,8 \\
      --draft D --target T --prm P --router R --data math500 --limit 100 --concurrency 1 --out runs/sweep

Each point runs into OUT/POLICY-TAU/ (OUT/POLICY/ without a threshold) and resumes like `arbitrage run`. The
points take turns problem by problem (--no-interleave: one after another).
Thresholds: POLICY=V1,V2,... or POLICY=START:STOP:STEP (STOP included); a thresholded policy in --policies
without --thresholds runs at its default. Writes OUT/sweep.json, OUT/sweep.txt, OUT/accuracy_vs_latency.png
and OUT/accuracy_vs_escalation.png.
"""


def cmd_sweep(args) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    points = sweep_points(policies, parse_thresholds(args.thresholds))
    base = config_from_args(args, policy=points[0][0], out=args.out)
    quiet_libraries(args.quiet)
    if not args.quiet:
        print(f"sweep: {len(points)} points: {', '.join(point_dir(p, t) for p, t in points)}", flush=True)
    if args.ray:  # shards as Ray tasks, each an ordinary sweep; joined (checked) into --out
        from .cli_args import ray_shards
        from .sweep import merge_shards

        merge_shards(ray_shards(args, args.out), args.out, plots=not args.no_plots)
    else:
        run_sweep(
            base, points, args.out, progress=not args.quiet, plots=not args.no_plots, interleave=not args.no_interleave
        )
    with open(os.path.join(args.out, "sweep.txt")) as f:
        print(f.read(), end="")
    print(f"wrote {os.path.join(args.out, 'sweep.json')}")
    return 0


def cmd_merge(args) -> int:
    from .sweep import merge_shards

    merge_shards(args.shards, args.out, plots=not args.no_plots)
    with open(os.path.join(args.out, "sweep.txt")) as f:
        print(f.read(), end="")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="policies x thresholds on one dataset; Pareto frontiers and matched-accuracy speedups",
        description="Run several policies and thresholds over one dataset with the same models "
        "(each model loaded once), then report each policy's accuracy/latency frontier "
        "and the router's latency at matched accuracy against rsd, target-only and the "
        "outside baselines.",
        epilog=EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    from .registry import registry

    ranges = registry().thresholded()
    p.add_argument(
        "--policies",
        required=True,
        help=f"comma-separated, from: {', '.join(sweep_policy_names())} (assisted: transformers assisted "
        f"generation with the same draft and target; specreason: the target judges each draft step)",
    )
    p.add_argument(
        "--thresholds",
        action="append",
        default=[],
        metavar="POLICY=VALUES",
        help="thresholds of one policy: 0.3,0.5,0.7 or 0.1:0.9:0.2 (repeat per policy); "
        + ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in ranges.items()),
    )
    p.add_argument("--out", required=True, help="output directory (one sub-directory per point)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--no-interleave",
        action="store_true",
        help="run the points one after another (default: they take turns problem by problem, in blocks "
        "of --concurrency, so that the machine's load changing during the sweep cannot favour a "
        "point)",
    )
    add_model_arguments(p)
    add_loader_option_arguments(p)
    add_policy_option_arguments(p)
    add_ray_arguments(p)
    add_data_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(func=cmd_sweep, threshold=None)

    m = sub.add_parser(
        "sweep-merge",
        help="one sweep report from sweeps run on shards of the problems",
        description="Join the sweeps N machines ran with --shard K/N (each into its own --out): every "
        "point's shards are checked (same settings, each shard once) and joined, and the "
        "report covers the whole problem set.",
    )
    m.add_argument("shards", nargs="+", help="the shard sweeps' output directories")
    m.add_argument("--out", required=True, help="directory for the merged points and report")
    m.add_argument("--no-plots", action="store_true")
    m.set_defaults(func=cmd_merge)
