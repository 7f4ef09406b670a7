"""`arbitrage demo`: the whole method, offline, on the testbed's shipped models, in minutes on a CPU.

1. `generate` on training problems (draft, target and the checker PRM write and score both steps everywhere);
2. router data from those results, and a probe router trained on them (the router pipeline's own code);
3. a sweep on held-out test problems: draft, target, rsd and router over thresholds, and the oracle;
4. one table (policy, tau, accuracy, escalation rate, mean latency per problem), a Pareto plot (PNG), and the
   measured figures of issue 5 (`analysis`): the draft/target gap, the share of RSD escalations where the target
   did no better, and whether the router reaches RSD's accuracy at lower latency, with the ratio.

Every stage is an ordinary resumable run under OUT, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError

# An imperfect PRM: the exact checker's verdict flipped on 10% of steps, plus Gaussian noise of std 0.1.
# Chosen before any router was trained, to stand for a real PRM's errors; `--prm testbed-checker` is exact.
DEFAULT_PRM = "testbed-checker:0.1:0.1"
# The checker's scores sit near 0 or 1, so RSD thresholds between 0.2 and 0.8 all make the same decisions;
# 0.9 also rejects correct steps whose noisy score fell below it.
THRESHOLDS = {"rsd": [0.5, 0.9], "oracle": [0.0], "router": [0.3, 0.5, 0.7]}
QUICK_THRESHOLDS = {"rsd": [0.5], "oracle": [0.0], "router": [0.5]}


@dataclass
class DemoConfig:
    out: str = "demo-out"
    models: str | None = None          # directory with draft/ and target/ (default: the shipped models)
    n_train: int = 120                 # training problems for `generate` (router data)
    n_test: int = 50                   # held-out test problems for the sweep
    prm: str = DEFAULT_PRM
    thresholds: dict = field(default_factory=lambda: {k: list(v) for k, v in THRESHOLDS.items()})
    # Latency is measured one problem at a time, as in the paper (batch size 1): with several problems in
    # flight, every escalated step of one problem holds up the others, which is not what the method is about.
    concurrency: int = 1
    generate_concurrency: int = 16     # `generate` only produces training data: throughput is what counts
    threads: int = 1                   # torch threads: 1 is fastest for these tiny models on a shared CPU
    seed: int = 0
    progress: bool = True

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        """A few problems and thresholds, all in one batch (a smoke run for CI; its latencies mean little)."""
        kw.setdefault("n_train", 16)
        kw.setdefault("n_test", 8)
        kw.setdefault("concurrency", 8)
        kw.setdefault("thresholds", {k: list(v) for k, v in QUICK_THRESHOLDS.items()})
        return cls(**kw)


def _engine_config(concurrency: int):
    from ..engine import EngineConfig

    # Steps are ~20 tokens and problems at most 6 steps; the limits only stop a model that loses the format.
    return EngineConfig(max_steps=10, max_step_tokens=48, max_total_tokens=320, concurrency=concurrency)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo into `cfg.out`; returns the summary also written to OUT/demo.json."""
    import torch

    from ..factory import ModelOptions
    from ..router_training import build_data, evaluate_router, train_router
    from ..run import RunConfig, run
    from ..sweep import run_sweep
    from .evaluate import default_models_dir

    if cfg.n_train < 2 or cfg.n_test < 1:
        raise ConfigError("--n-train must be at least 2 (router data is split by problem) and --n-test at least 1")
    models_dir = Path(cfg.models) if cfg.models else default_models_dir()
    for role in ("draft", "target"):
        if not (models_dir / role / "config.json").is_file():
            raise ConfigError(f"no {role} model in {models_dir / role}: pass --models DIR holding draft/ and target/ "
                              f"(`arbitrage testbed train --out DIR` makes them)")
    torch.set_num_threads(cfg.threads)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bars
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    specs = {"draft": str(models_dir / "draft"), "target": str(models_dir / "target"), "prm": cfg.prm}
    common = dict(model_options=ModelOptions(device="cpu", dtype="float32", seed=cfg.seed), progress=cfg.progress)
    timings: dict[str, float] = {}

    # 1. generate on training problems
    _log(f"[demo 1/4] generate on {cfg.n_train} training problems (draft + target + {cfg.prm})")
    t0 = time.perf_counter()
    gen = run(RunConfig(policy="generate", out=str(out / "generate"), data=f"testbed:train:{cfg.n_train}",
                        models=specs, engine=_engine_config(cfg.generate_concurrency), **common))
    timings["generate"] = time.perf_counter() - t0

    # 2. router data and a probe router
    _log("[demo 2/4] router data from the generate results; train a probe router")
    t0 = time.perf_counter()
    counts = build_data([str(out / "generate" / "results.jsonl")], str(out / "router-data"), seed=cfg.seed)
    router_dir = train_router(str(out / "router-data"), str(out / "router"), kind="probe", seed=cfg.seed, log=_log)
    router_eval = evaluate_router(router_dir, str(out / "router-data"), tau=0.5,
                                  out_json=str(out / "router-eval.json"))
    timings["router"] = time.perf_counter() - t0

    # 3. the sweep on held-out problems
    points = [("draft", None), ("target", None)]
    for policy in ("rsd", "oracle", "router"):
        points += [(policy, float(t)) for t in cfg.thresholds.get(policy, [])]
    _log(f"[demo 3/4] sweep on {cfg.n_test} test problems, {cfg.concurrency} at a time: {len(points)} points")
    t0 = time.perf_counter()
    base = RunConfig(policy="draft", out=str(out / "sweep"), data=f"testbed:test:{cfg.n_test}",
                     models={**specs, "router": router_dir}, engine=_engine_config(cfg.concurrency), **common)
    metrics = run_sweep(base, points, str(out / "sweep"), progress=cfg.progress)
    timings["sweep"] = time.perf_counter() - t0

    # 4. table, plot, measurements
    _log("[demo 4/4] report")
    summary = _summarize(cfg, out, metrics, gen, counts, router_eval)
    plot = out / "sweep" / "accuracy_vs_latency.png"
    if plot.is_file():
        shutil.copyfile(plot, out / "pareto.png")
        summary["pareto_png"] = str(out / "pareto.png")
    timings["total"] = time.perf_counter() - t_start
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["config"] = {**asdict(cfg), "models": str(models_dir)}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_report(summary))
    return summary


def _summarize(cfg: DemoConfig, out: Path, metrics: list[dict], gen: dict, counts: dict, router_eval: dict) -> dict:
    from . import analysis

    keep = ("policy", "threshold", "n", "accuracy", "escalation_rate", "latency_s_mean", "target_calls", "dir")
    points = [{k: m.get(k) for k in keep} for m in metrics]
    wasted = {}
    for m in metrics:
        if m["policy"] == "rsd":
            wasted[f"{m['threshold']:g}"] = analysis.wasted_escalations(analysis.read_records(out / "sweep" / m["dir"]))
    comparisons = analysis.router_vs_rsd(metrics)
    head = analysis.headline(metrics, comparisons)
    if "router_vs_best_rsd" in head:
        head["rsd_wasted"] = wasted.get(f"{head['router_vs_best_rsd']['rsd_tau']:g}")
    oracle = [m for m in metrics if m["policy"] == "oracle"]
    return {
        "points": points, "headline": head, "rsd_wasted_escalations": wasted, "router_vs_rsd": comparisons,
        "step_outcomes": {"generate_train": analysis.step_outcomes(analysis.read_records(out / "generate")),
                          **({"oracle_test": analysis.step_outcomes(analysis.read_records(out / "sweep" /
                                                                                          oracle[0]["dir"]))}
                             if oracle else {})},
        "generate": {"accuracy": gen["accuracy"], "n": gen["n"], "advantage_positive_rate":
                     gen.get("advantage_positive_rate")},
        "router_data": counts,
        "router_eval": {k: router_eval.get(k) for k in ("spearman", "roc_auc", "n", "accuracy_escalate",
                                                         "accuracy_keep", "oracle_agreement") if k in router_eval},
    }


def _f(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_report(s: dict) -> str:
    """The demo's printed output: the sweep table, then the measured figures."""
    lines = [f"{'policy':<8} {'tau':>5} {'accuracy':>9} {'escalation':>11} {'latency/problem (s)':>20}"]
    for p in s["points"]:
        lines.append(f"{p['policy']:<8} {_f(p['threshold'], 'g'):>5} {p['accuracy']:>9.3f} "
                     f"{p['escalation_rate']:>11.3f} {p['latency_s_mean']:>20.4f}")
    h = s["headline"]
    lines += ["", f"draft accuracy {_f(h['draft_accuracy'])}, target {_f(h['target_accuracy'])}: "
                  f"gap {_f(h['gap'])} (n = {s['points'][0]['n']})"]
    for tau, w in s["rsd_wasted_escalations"].items():
        lines.append(f"rsd tau={tau}: {w['escalations']} escalated steps, the target no better on {w['wasted']} "
                     f"({_f(w['wasted_fraction'])}): both wrong {w['both_wrong']}, both right {w['both_right']}, "
                     f"target wrong where the draft was right {w['draft_only']}")
    for c in s["router_vs_rsd"]:
        if c["router_tau"] is None:
            lines.append(f"rsd tau={c['rsd_tau']:g} (acc {c['rsd_accuracy']:.3f}): no router point reaches it")
        else:
            lines.append(f"rsd tau={c['rsd_tau']:g} (acc {c['rsd_accuracy']:.3f}, {c['rsd_latency_s']:.4f} s) vs "
                         f"router tau={c['router_tau']:g} (acc {c['router_accuracy']:.3f}, "
                         f"{c['router_latency_s']:.4f} s): latency ratio rsd/router {_f(c['speedup'], '.2f')}, "
                         f"target calls ratio {_f(c['target_call_ratio'], '.2f')}")
    so = s["step_outcomes"].get("oracle_test") or s["step_outcomes"]["generate_train"]
    sh = so["shares"]
    lines.append(f"step mix (exact checker, both models from the same context, {so['steps']} steps): both right "
                 f"{_f(sh['both_right'])}, target only {_f(sh['target_only'])}, draft only {_f(sh['draft_only'])}, "
                 f"both wrong {_f(sh['both_wrong'])}")
    re = s["router_eval"]
    if re:
        lines.append("router on held-out generate steps: " + ", ".join(f"{k} {_f(v)}" for k, v in re.items()
                                                                       if isinstance(v, float)))
    if s.get("pareto_png"):
        lines.append(f"Pareto plot: {s['pareto_png']}")
    if s.get("seconds"):
        lines.append("seconds (this invocation; finished points are not re-run): "
                     + ", ".join(f"{k} {v}" for k, v in s["seconds"].items()))
    return "\n".join(lines)


def cmd_demo(args) -> int:
    kw = dict(out=args.out, models=args.models, prm=args.prm, threads=args.threads, seed=args.seed,
              progress=not args.quiet)
    for name in ("n_train", "n_test", "concurrency"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    cfg = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    if cfg.concurrency < 1 or cfg.threads < 1:
        raise ConfigError("--concurrency and --threads must be at least 1")
    run_demo(cfg)
    return 0


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="the offline end-to-end demo on the testbed (minutes on a CPU)",
                       description=__doc__.split("\n\n")[0] + " Generate on training problems, train a probe "
                                   "router, sweep draft/target/rsd/oracle/router on test problems, print the table "
                                   "and the measured figures, write OUT/pareto.png and OUT/demo.json.")
    p.add_argument("--out", default="demo-out", help="output directory (default: %(default)s); re-running resumes")
    p.add_argument("--n-train", type=int, help="training problems for router data (default: 120; --quick: 16)")
    p.add_argument("--n-test", type=int, help="held-out test problems (default: 50; --quick: 8)")
    p.add_argument("--quick", action="store_true", help="few problems and thresholds (a smoke run for CI)")
    p.add_argument("--models", help="directory with draft/ and target/ (default: the shipped models)")
    p.add_argument("--prm", default=DEFAULT_PRM,
                   help="testbed-checker[:FLIP[:SIGMA]] (default: %(default)s, a checker wrong on ~10%% of steps)")
    p.add_argument("--concurrency", type=int,
                   help="test problems in flight at once (default: 1, the paper's batch-size-1 latency; --quick: 8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
