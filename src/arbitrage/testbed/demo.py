"""`arbitrage demo`: the whole method, offline, on the testbed's shipped models, in minutes on a CPU, and the
figures a user decides on, with their uncertainty.

1. `generate` on training problems (draft, target and the noisy checker PRM write and score both steps);
2. router data from those results; a probe router on whole draft steps and one deciding after the draft's first
   K tokens; their held-out figures;
3. thresholds from the training side only (`router thresholds` at chosen escalation rates) for the router, RSD
   and the training-free baselines (confidence, glimpse): nothing is tuned on the test problems;
4. a sweep on held-out test problems, one problem at a time (the paper's batch size 1): draft, target, oracle,
   and every thresholded policy at its thresholds (`demo_points.py`; `--evidence` adds the full comparison), the
   points taking turns problem by problem so that the machine's load cannot favour one;
5. the report (`report.py`): latency at matched accuracy with paired bootstrap intervals, accuracy differences
   with a sign test, wasted RSD escalations, the draft/target cost ratio, written to OUT/demo.json.

Every stage is an ordinary resumable run under OUT, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# The plain task's PRM: the exact checker's verdict flipped on 10% of steps, plus Gaussian noise of std 0.1
# (step ROC-AUC about 0.9 against the exact verdict, as a good real PRM's), free to run. The phrased task's is a
# trained value-head PRM (`testbed train-prm`) that costs a forward pass per step and errs like one.
DEFAULT_PRM = "testbed-checker:0.1:0.1"
TASKS = ("phrased", "plain")
# Escalation rates the thresholds are set for, on the training-side `generate` steps.
RATES = (0.1, 0.2, 0.3, 0.45)
QUICK_RATES = (0.3,)
EARLY_K = 2  # the early router decides after the draft's first 2 tokens
CLASSIFIER_LRS = (1e-3, 3e-4)  # the classifier router's learning rate is chosen on the validation split


@dataclass
class DemoConfig:
    out: str = "demo-out"
    task: str = "phrased"  # phrased (several phrasings per step, a trained PRM) | plain
    models: str | None = None  # directory with draft/ and target/ (default: the task's shipped models)
    n_train: int = 300  # training problems for `generate` (router data and thresholds)
    n_test: int = 100  # held-out test problems for the sweep
    prm: str | None = None  # default: the task's (trained PRM / noisy checker)
    rates: tuple = RATES
    early_k: int | None = EARLY_K  # None: no early router
    # Latency is measured one problem at a time, as in the paper (batch size 1): with several problems in
    # flight, every escalated step of one problem holds up the others, which is not what the method is about.
    concurrency: int = 1
    generate_concurrency: int = 16  # `generate` only produces training data: throughput is what counts
    threads: int = 1  # torch threads: 1 is fastest for these tiny models on a shared CPU
    seed: int = 0
    n_boot: int = 2000
    progress: bool = True
    quick: bool = False
    evidence: bool = False  # the full comparison (demo_points.py)

    @classmethod
    def quick_run(cls, **kw) -> DemoConfig:
        """A few problems and one rate, all in one batch (a smoke run for CI; its figures mean little)."""
        kw.setdefault("n_train", 24)
        kw.setdefault("n_test", 8)
        kw.setdefault("concurrency", 8)
        kw.setdefault("rates", QUICK_RATES)
        kw.setdefault("n_boot", 200)
        return cls(quick=True, **kw)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _models_dir(cfg: DemoConfig) -> Path:
    from .evaluate import default_models_dir

    if cfg.task not in TASKS:
        raise ConfigError(f"--task {cfg.task!r}: expected one of {', '.join(TASKS)}")
    d = Path(cfg.models) if cfg.models else default_models_dir(cfg.task)
    for role in ("draft", "target"):
        if not (d / role / "config.json").is_file():
            raise ConfigError(
                f"no {role} model in {d / role}: pass --models DIR holding draft/ and target/ "
                f"(`arbitrage testbed train --out DIR` makes them)"
            )
    return d


def _prm_spec(cfg: DemoConfig, models_dir: Path) -> str:
    if cfg.prm:
        return cfg.prm
    if cfg.task == "phrased":
        if not (models_dir / "prm" / "config.json").is_file():
            raise ConfigError(
                f"no trained PRM in {models_dir / 'prm'} (`arbitrage testbed train-prm --models "
                f"{models_dir}` makes it), or pass --prm"
            )
        return str(models_dir / "prm")
    return DEFAULT_PRM


def _train_routers(cfg: DemoConfig, out: Path, models_dir: Path) -> tuple[dict, dict, list]:
    """The routers (probe, early probe; with --evidence a probe reading the draft's hidden state and a classifier
    fine-tuned from the draft, its learning rate chosen on the validation split) and their held-out figures."""
    from ..router_training import evaluate_router, train_router
    from ..router_training.evaluate import decide_after_curve

    data = str(out / "router-data")
    routers = {"router": str(out / "router")}
    train_router(data, routers["router"], kind="probe", seed=cfg.seed, log=_log)
    if cfg.early_k:
        routers["early"] = str(out / f"router-k{cfg.early_k}")
        train_router(data, routers["early"], kind="probe", seed=cfg.seed, decide_after=cfg.early_k, log=_log)
    if cfg.evidence:
        routers["hidden"] = str(out / "router-hidden")
        train_router(
            data,
            routers["hidden"],
            kind="probe",
            seed=cfg.seed,
            features=("logprobs", "entropies", "shape", "hidden"),
            log=_log,
        )
        best = None
        for lr in CLASSIFIER_LRS:
            d = str(out / f"router-classifier-lr{lr:g}")
            if not (Path(d) / "arbitrage_router.json").is_file():
                train_router(
                    data,
                    d,
                    kind="classifier",
                    base=str(models_dir / "draft"),
                    seed=cfg.seed,
                    lr=lr,
                    epochs=3,
                    batch_size=16,
                    device="cpu",
                    log=_log,
                )
            auc = evaluate_router(d, data, tau=0.5)["roc_auc"] or 0.0
            if best is None or auc > best[0]:
                best = (auc, d, lr)
        assert best is not None  # CLASSIFIER_LRS is not empty
        routers["classifier"] = best[1]
        _log(f"classifier router: lr {best[2]:g} chosen on the validation split (ROC-AUC {best[0]:.3f})")
    evals = {name: evaluate_router(d, data, tau=0.5) for name, d in routers.items()}
    k_curve = decide_after_curve(data, [1, 2, 4, 8, None], seed=cfg.seed) if not cfg.quick else []
    return routers, evals, k_curve


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo into `cfg.out`; returns the summary also written to OUT/demo.json."""
    import torch

    from ..factory import ModelOptions
    from ..router_training import build_data
    from ..router_training.thresholds import rate_thresholds
    from ..run import RunConfig, run
    from ..sweep import run_sweep
    from .demo_points import build_points, engine_config, relabel
    from .report import format_report, summarize

    if cfg.n_train < 2 or cfg.n_test < 1:
        raise ConfigError("--n-train must be at least 2 (router data is split by problem) and --n-test at least 1")
    models_dir = _models_dir(cfg)
    prm = _prm_spec(cfg, models_dir)
    torch.set_num_threads(cfg.threads)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bars
        hf_logging.set_verbosity_error()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    specs = {"draft": str(models_dir / "draft"), "target": str(models_dir / "target"), "prm": prm}
    # --evidence: the draft's hidden state is recorded (the probe that reads it) and computed at run time
    common: dict[str, Any] = dict(
        model_options=ModelOptions(
            device="cpu", dtype="float32", seed=cfg.seed, threads=cfg.threads, return_hidden=cfg.evidence
        ),
        progress=cfg.progress,
    )
    timings: dict[str, float] = {}

    _log(f"[demo 1/5] {cfg.task} testbed: generate on {cfg.n_train} training problems (draft + target + {prm})")
    t0 = time.perf_counter()
    run(
        RunConfig(
            policy="generate",
            out=str(out / "generate"),
            data=f"testbed:train:{cfg.n_train}",
            models=specs,
            engine=engine_config(cfg.generate_concurrency),
            **common,
        )
    )
    timings["generate"] = time.perf_counter() - t0

    _log(
        "[demo 2/5] router data; routers"
        + (" (probe, early probe, hidden-state probe, classifier)" if cfg.evidence else "")
    )
    t0 = time.perf_counter()
    counts = build_data([str(out / "generate" / "results.jsonl")], str(out / "router-data"), seed=cfg.seed)
    routers, router_eval, k_curve = _train_routers(cfg, out, models_dir)
    timings["router"] = time.perf_counter() - t0

    _log(
        f"[demo 3/5] thresholds for escalation rates {', '.join(f'{r:.0%}' for r in cfg.rates)} on the "
        f"training-side generate steps"
    )
    found = rate_thresholds([str(out / "generate")], cfg.rates, routers["router"], device="cpu")
    thresholds = {p: sorted({e["tau"] for e in found.get(p, [])}) for p in ("rsd", "router", "confidence", "glimpse")}
    for name in ("early", "hidden", "classifier"):
        if name in routers:
            more = rate_thresholds([str(out / "generate")], cfg.rates, routers[name], device="cpu")
            thresholds[f"router-{name}"] = sorted({e["tau"] for e in more["router"]})
    (out / "thresholds.json").write_text(
        json.dumps({"rates": list(cfg.rates), "thresholds": thresholds, "found": found}, indent=2) + "\n"
    )

    base, points, extra, labels = build_points(cfg, out, specs, routers, thresholds, common)
    _log(
        f"[demo 4/5] sweep on {cfg.n_test} test problems, {cfg.concurrency} at a time, "
        f"{len(points) + len(extra)} points taking turns problem by problem"
    )
    t0 = time.perf_counter()
    metrics = run_sweep(base, points, str(out / "sweep"), progress=cfg.progress, report=False, extra=extra)
    relabel(metrics, out / "sweep", labels)
    timings["sweep"] = time.perf_counter() - t0

    _log("[demo 5/5] report")
    from ..sweep_report import write_report

    write_report(metrics, str(out / "sweep"))
    summary = summarize(
        out, metrics, cfg, counts=counts, router_eval=router_eval, k_curve=k_curve, thresholds=thresholds
    )
    plot = out / "sweep" / "accuracy_vs_latency.png"
    if plot.is_file():
        shutil.copyfile(plot, out / "pareto.png")
        summary["pareto_png"] = str(out / "pareto.png")
    timings["total"] = time.perf_counter() - t_start
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["config"] = {**asdict(cfg), "models": str(models_dir), "prm": prm}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_report(summary))
    return summary


def cmd_demo(args) -> int:
    kw = dict(
        out=args.out,
        task=args.task,
        models=args.models,
        prm=args.prm,
        threads=args.threads,
        seed=args.seed,
        progress=not args.quiet,
        evidence=args.evidence,
    )
    for name in ("n_train", "n_test", "concurrency"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.rates:
        kw["rates"] = tuple(float(x) for x in args.rates.split(","))
    cfg = DemoConfig.quick_run(**kw) if args.quick else DemoConfig(**kw)
    if cfg.concurrency < 1 or cfg.threads < 1:
        raise ConfigError("--concurrency and --threads must be at least 1")
    if not all(0 < r < 1 for r in cfg.rates):
        raise ConfigError("--rates must lie in (0, 1)")
    run_demo(cfg)
    return 0


def register_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the offline end-to-end demo on the testbed, with its figures (minutes on a CPU)",
        description=__doc__.split("\n\n")[0] + " Generate on training problems, train probe routers, "
        "set every threshold on the training side, sweep the policies on test problems "
        "one at a time, and report latency at matched accuracy with bootstrap intervals "
        "(OUT/demo.json, OUT/pareto.png).",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default: %(default)s); re-running resumes")
    p.add_argument("--n-train", type=int, help="training problems for router data (default: 300; --quick: 24)")
    p.add_argument("--n-test", type=int, help="held-out test problems (default: 100; --quick: 8)")
    p.add_argument(
        "--rates",
        help=f"escalation rates the thresholds are set for, on training steps (default: {','.join(map(str, RATES))})",
    )
    p.add_argument("--quick", action="store_true", help="few problems and one rate (a smoke run for CI)")
    p.add_argument(
        "--task",
        default="phrased",
        choices=TASKS,
        help="phrased: several phrasings per step, a trained PRM (default); plain: one phrasing per step "
        "and a noisy checker as PRM (the first testbed, kept so its results reproduce)",
    )
    p.add_argument(
        "--evidence",
        action="store_true",
        help="the full comparison: also target-only with speculation, assisted generation, a hidden-state "
        "probe router, a classifier router, and every step policy without reusing the draft's work",
    )
    p.add_argument("--models", help="directory with draft/ and target/ (default: the task's shipped models)")
    p.add_argument(
        "--prm",
        help="a PRM spec (default: the phrased task's trained PRM; the plain task's "
        f"{DEFAULT_PRM}, a checker wrong on ~10%% of steps)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="test problems in flight at once (default: 1, the paper's batch-size-1 latency; --quick: 8)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


__all__ = ["DemoConfig", "run_demo", "register_demo", "DEFAULT_PRM", "TASKS"]
