"""`arbitrage testbed data|train|eval` and `arbitrage demo`."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from ..errors import ConfigError

DEFAULT_EVAL_N = 500


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"--{name} must be at least 1 (got {value})")


# ---------------------------------------------------------------- data


def cmd_data(args) -> int:
    from .task import SPLITS, make_problems, problem_record

    if args.split not in SPLITS:
        raise ConfigError(f"--split {args.split!r}: expected one of {', '.join(SPLITS)}")
    _positive("n", args.n)
    lines = "".join(json.dumps(problem_record(p)) + "\n" for p in make_problems(args.split, args.n, args.seed))
    if args.out in (None, "-"):
        sys.stdout.write(lines)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(lines)
        print(f"wrote {args.n} {args.split} problems to {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- train


def _command_line(args, role: str, spec, cfg) -> str:
    """The command that makes `role` again, every setting spelled out (a card must not depend on defaults
    that may change)."""
    argv = [
        "arbitrage",
        "testbed",
        "train",
        "--out",
        args.out,
        "--roles",
        role,
        "--steps",
        str(cfg.steps),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        f"{cfg.lr:g}",
        "--warmup",
        str(cfg.warmup),
        "--seed",
        str(cfg.seed),
        "--device",
        cfg.device,
        "--threads",
        str(cfg.threads),
        "--eval-every",
        str(cfg.eval_every),
        f"--{role}-spec",
        str(spec),
        "--task",
        args.task,
    ]
    argv += ["--no-eval"] if args.no_eval else ["--eval-n", str(args.eval_n)]
    return shlex.join(argv)


def cmd_train(args) -> int:
    from dataclasses import asdict

    from .evaluate import evaluate
    from .recipe import ROLE_DEFAULTS, SPECS, ModelSpec, TrainConfig
    from .task import make_chains
    from .train import CARD, environment, train_model, write_card

    for name in ("steps", "batch_size", "eval_n"):
        _positive(name.replace("_", "-"), getattr(args, name))
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    bad = [r for r in roles if r not in SPECS]
    if bad or not roles:
        raise ConfigError(f"--roles {args.roles!r}: expected a comma-separated subset of {', '.join(SPECS)}")
    specs = {}
    for role in roles:
        text = getattr(args, f"{role}_spec")
        try:
            specs[role] = ModelSpec.parse(text) if text else SPECS[role]
        except ValueError as exc:
            raise ConfigError(f"--{role}-spec: {exc}") from None
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    if args.eval_every < 0:
        raise ConfigError("--eval-every must be >= 0 (0: no validation during training)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card_path = out / CARD
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    task_name = {
        "plain": "testbed chained arithmetic (arbitrage.testbed.task), one phrasing per step",
        "phrased": "testbed chained arithmetic with several phrasings per step and a style per role "
        "(arbitrage.testbed.phrasing)",
    }[args.task]
    if card.get("task_mode", "plain") != args.task and card.get("models"):
        raise ConfigError(
            f"{card_path} holds models of the {card.get('task_mode', 'plain')!r} task; train the "
            f"{args.task!r} task into another --out"
        )
    card.setdefault("task", task_name)
    card["task_mode"] = args.task
    card.setdefault("models", {})
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    eval_chains = make_chains("test", args.eval_n, 0) if not args.no_eval else []
    for role in roles:
        defaults = ROLE_DEFAULTS[role]
        steps = args.steps if args.steps is not None else defaults["steps"]
        lr = args.lr if args.lr is not None else defaults["lr"]
        cfg = TrainConfig(
            steps=steps,
            batch_size=args.batch_size,
            lr=lr,
            warmup=min(args.warmup, steps),
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            eval_every=args.eval_every,
        )
        info = train_model(role, out, cfg, specs[role], log=log, task=args.task)
        info.update(
            command=_command_line(args, role, specs[role], cfg),
            seed=cfg.seed,
            train_config=asdict(cfg),
            environment=environment(),
            trained_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        if eval_chains:
            t0 = time.time()
            report = evaluate(out, eval_chains, steps=True, roles=[role])[role]
            info["test"] = {
                "problems": f"testbed:test:{args.eval_n} (seed 0)",
                **report,
                "eval_seconds": round(time.time() - t0, 1),
            }
            log(
                f"{role}: test answer accuracy {report['answer_accuracy']:.3f} on {args.eval_n} problems, "
                f"step accuracy {report['step_accuracy']['all']['accuracy']:.3f}"
            )
        card["models"][role] = info
        write_card(out, card)
    print(json.dumps({r: card["models"][r].get("test", {}).get("answer_accuracy") for r in roles}))
    return 0


# ---------------------------------------------------------------- train-prm


def cmd_train_prm(args) -> int:
    from .prm_train import collect_steps, evaluate_prm, save_examples, train_prm
    from .train import CARD, environment, write_card

    for name in ("problems", "eval_problems", "epochs", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    models = Path(args.models)
    out = Path(args.out) if args.out else models / "prm"
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    train = collect_steps(models, "train", args.problems, args.seed, log=log)
    val = collect_steps(models, "validation", args.eval_problems, args.seed, log=log)
    if args.save_data:
        Path(args.save_data).mkdir(parents=True, exist_ok=True)
        save_examples(train, Path(args.save_data) / "train.jsonl")
        save_examples(val, Path(args.save_data) / "validation.jsonl")
    info = train_prm(
        train,
        models / "draft",
        out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log=log,
    )
    report = evaluate_prm(out, val)
    log(f"prm: validation step accuracy {report['accuracy']:.3f}, ROC-AUC {report['roc_auc']}, ECE {report['ece']}")
    argv = [
        "arbitrage",
        "testbed",
        "train-prm",
        "--models",
        str(models),
        "--out",
        str(out),
        "--problems",
        str(args.problems),
        "--eval-problems",
        str(args.eval_problems),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        f"{args.lr:g}",
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    card_path = models / CARD
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"models": {}}
    card.setdefault("models", {})["prm"] = {
        "role": "prm",
        "layout": "Skywork-o1-Open-PRM (causal LM body + v_head.summary; sigmoid at the step end)",
        "data": f"step-wise rollouts of draft and target on {args.problems} training problems "
        f"(testbed:train, seed {args.seed}), both candidates of every step labelled by the exact checker",
        **info,
        "command": shlex.join(argv),
        "environment": environment(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "validation": {"problems": f"testbed:validation:{args.eval_problems} (seed {args.seed})", **report},
    }
    write_card(models, card)
    print(json.dumps({"accuracy": report["accuracy"], "roc_auc": report["roc_auc"], "ece": report["ece"]}))
    return 0


# ---------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    from .evaluate import ROLES, default_models_dir, evaluate
    from .task import SPLITS, make_chains

    _positive("n", args.n)
    if args.split not in SPLITS:
        raise ConfigError(f"--split {args.split!r}: expected one of {', '.join(SPLITS)}")
    models = Path(args.models) if args.models else default_models_dir()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    report = evaluate(models, make_chains(args.split, args.n, args.seed), steps=not args.no_steps, roles=ROLES)
    print(format_eval(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def format_eval(report: dict) -> str:
    """A table: answer accuracy per model, then step accuracy per kind of step (after the reference prefix)."""
    roles = list(report)
    lines = [
        f"{'':<14}" + "".join(f"{r:>10}" for r in roles),
        f"{'answer acc':<14}" + "".join(f"{report[r]['answer_accuracy']:>10.3f}" for r in roles),
        f"{'parameters':<14}" + "".join(f"{report[r]['parameters']:>10,}" for r in roles),
    ]
    kinds = sorted({k for r in roles for k in report[r].get("step_accuracy", {})}, key=lambda k: (k == "all", k))
    if kinds:
        lines.append("step accuracy by kind (n):")
    for k in kinds:
        cells = [report[r]["step_accuracy"].get(k) for r in roles]
        n = next((c["n"] for c in cells if c), 0)
        lines.append(
            f"  {k + f' ({n})':<12}" + "".join(f"{c['accuracy']:>10.3f}" if c else f"{'-':>10}" for c in cells)
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- registration


def register(sub) -> None:
    from .recipe import ROLE_DEFAULTS, SPECS, TrainConfig

    tb = sub.add_parser(
        "testbed",
        help="the synthetic arithmetic testbed: data, training, evaluation",
        description="A synthetic multi-step arithmetic task with tiny trained draft/target LMs "
        "and an exact step checker as PRM.",
    )
    tsub = tb.add_subparsers(dest="testbed_command", metavar="SUBCOMMAND")
    tsub.required = True

    p = tsub.add_parser("data", help="write the problems of a split as JSON lines")
    p.add_argument("--split", default="test", help="train | validation | test (default: test)")
    p.add_argument("--n", type=int, default=DEFAULT_EVAL_N, help="number of problems (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output file (default: stdout)")
    p.set_defaults(func=cmd_data)

    p = tsub.add_parser(
        "train",
        help="train the draft and target LMs (seeded; CPU or CUDA)",
        description="Train the testbed's draft and/or target LM from scratch, save each with its "
        "tokenizer under OUT/ROLE, evaluate it on test problems, and record everything "
        "in OUT/card.json.",
    )
    p.add_argument("--out", required=True, help="output directory (OUT/draft, OUT/target, OUT/card.json)")
    p.add_argument("--roles", default="draft,target", help="which models to train (default: %(default)s)")
    p.add_argument(
        "--task",
        default="plain",
        choices=("plain", "phrased"),
        help="plain: one phrasing per step; phrased: several phrasings per step, a style per role "
        "(default: %(default)s)",
    )
    defaults = TrainConfig()
    per_role = ", ".join(f"{r} {d['steps']}" for r, d in ROLE_DEFAULTS.items())
    p.add_argument("--steps", type=int, help=f"optimizer steps per model (default: {per_role})")
    p.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="problems per step (default: %(default)s)"
    )
    lrs = ", ".join(f"{r} {d['lr']:g}" for r, d in ROLE_DEFAULTS.items())
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {lrs})")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="linear warm-up steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data stream (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="CPU threads; 0 keeps torch's default (default: %(default)s, fastest for models this small "
        "on a busy machine)",
    )
    p.add_argument("--draft-spec", help=f"draft size HIDDENxHEADSxLAYERSxINTERMEDIATE (default: {SPECS['draft']})")
    p.add_argument("--target-spec", help=f"target size (default: {SPECS['target']})")
    p.add_argument("--eval-n", type=int, default=DEFAULT_EVAL_N, help="test problems to evaluate on afterwards")
    p.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="log validation answer accuracy every N steps (0: never; default: %(default)s)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=cmd_train)

    p = tsub.add_parser(
        "train-prm",
        help="train a PRM (value-head LM) on the checker's labels of both models' steps",
        description="Roll out draft and target step by step on training problems (both write a "
        "candidate at every step; the exact checker labels both), fine-tune a value-head "
        "PRM from the draft on those labels, report its validation accuracy, calibration "
        "and per-kind errors, and record everything in MODELS/card.json.",
    )
    p.add_argument("--models", required=True, help="directory with draft/ and target/ (and card.json)")
    p.add_argument("--out", help="where to write the PRM (default: MODELS/prm)")
    p.add_argument("--problems", type=int, default=4000, help="training problems rolled out (default: %(default)s)")
    p.add_argument(
        "--eval-problems",
        type=int,
        default=500,
        help="validation problems rolled out for the report (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    p.add_argument("--save-data", help="also write the labelled steps (train.jsonl, validation.jsonl) here")
    p.set_defaults(func=cmd_train_prm)

    p = tsub.add_parser(
        "eval",
        help="accuracy of the draft and target on test problems",
        description="Greedy whole-solution answer accuracy of each model, and the accuracy of its "
        "next step after the reference prefix, per kind of step.",
    )
    p.add_argument("--models", help="directory with draft/ and target/ (default: the shipped models)")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=DEFAULT_EVAL_N)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-steps", action="store_true", help="answer accuracy only")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    p.add_argument("--json", help="also write the report to this file")
    p.set_defaults(func=cmd_eval)

    from .demo import register_demo

    register_demo(sub)
