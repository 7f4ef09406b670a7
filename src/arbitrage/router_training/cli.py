"""`arbitrage router build-data | train | eval | thresholds`."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from . import KINDS, build_data, evaluate_router, train_router


def _unescape(s: str) -> str:
    return s.encode("utf-8").decode("unicode_escape")


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{s} is not in [0, 1)")
    return v


def cmd_build_data(args) -> int:
    sep = _unescape(args.separator) if args.separator is not None else None
    counts = build_data(
        args.results,
        args.out,
        margin=args.margin,
        balance=not args.no_balance,
        val_fraction=args.val_fraction,
        seed=args.seed,
        separator=sep,
        author_tags=not args.no_author_tags,
        label_from=args.label_from,
    )
    print(f"{'split':<22}{'examples':>10}{'escalate':>10}{'keep':>10}{'escalate %':>12}")
    for name in ("all", "train_before_balance", "train", "validation"):
        c = counts[name]
        pct = f"{100 * c['escalate'] / c['n']:.1f}" if c["n"] else "-"
        print(f"{name:<22}{c['n']:>10}{c['escalate']:>10}{c['keep']:>10}{pct:>12}")
    p = counts["problems"]
    print(f"problems: {p['train']} train, {p['validation']} validation -> {args.out}")
    return 0


def cmd_train(args) -> int:
    log = lambda s: print(s, file=sys.stderr)
    if args.kind == "probe":
        unused = [
            f
            for f in ("lr", "epochs", "batch_size", "grad_accum", "warmup", "max_length")
            if getattr(args, f) is not None
        ]
        if unused:
            raise ConfigError(f"--{unused[0].replace('_', '-')} is for --kind classifier, not probe")
        hyper = {
            "features": args.probe_features.split(",") if args.probe_features else None,
            "C": args.C,
            "classes": args.classes,
            "ordinal": args.ordinal,
            "decide_after": args.decide_after,
        }
    else:
        if args.probe_features or args.C is not None or args.decide_after is not None:
            raise ConfigError("--probe-features, --C and --decide-after are for --kind probe")
        hyper_heads = {"classes": args.classes, "ordinal": args.ordinal}
        hyper = {
            k: getattr(args, k)
            for k in ("lr", "epochs", "batch_size", "grad_accum", "warmup", "max_length")
            if getattr(args, k) is not None
        }
        hyper.update(
            weight_decay=args.weight_decay, device=args.device, gradient_checkpointing=args.gradient_checkpointing
        )
        if args.no_bf16:
            hyper["bf16"] = False
        hyper.update(hyper_heads)
    out = train_router(
        args.data,
        args.out,
        kind=args.kind,
        base=args.base,
        seed=args.seed,
        shuffle_labels=args.shuffle_labels,
        log=log,
        **hyper,
    )
    import os

    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from the process that wrote the router
        print(out)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import decide_after_curve, print_table

    if args.ks:
        ks = [None if k.strip() == "full" else int(k) for k in args.ks.split(",") if k.strip()]
        rows = decide_after_curve(args.data, ks, log=print)
        print(f"{'K':>6}{'Spearman':>10}{'ROC-AUC':>9}")
        for r in rows:
            print(
                f"{'full' if r['decide_after'] is None else r['decide_after']:>6}{r['spearman']:>10.4f}"
                f"{r['roc_auc']:>9.4f}"
            )
        if args.out_json:
            with open(args.out_json, "w") as f:
                json.dump(rows, f, indent=2)
        return 0
    if not args.router:
        raise ConfigError("give --router DIR (or --ks to fit and compare probes deciding after K tokens)")
    m = evaluate_router(
        args.router,
        args.data,
        tau=args.tau,
        out_json=args.out_json,
        oracle_tau=args.oracle_tau,
        device=args.device,
        batch_size=args.batch_size,
    )
    print_table(m, f"router {args.router} on {m['data']}")
    if "per_class_accuracy" in m:
        print(
            "per-class accuracy (class: edges "
            + ", ".join(f"{e:.3g}" for e in m["edges"])
            + "): "
            + ", ".join(f"{c}: {v:.3f}" if v is not None else f"{c}: -" for c, v in m["per_class_accuracy"].items())
        )
    if args.out_json:
        print(f"figures -> {args.out_json}")
    else:
        print(json.dumps({k: m[k] for k in ("n", "spearman", "roc_auc", "balanced_accuracy", "oracle_agreement")}))
    return 0


def _rate_list(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None


def cmd_thresholds(args) -> int:
    from .thresholds import rate_thresholds, report

    found = rate_thresholds(args.results, args.rates, args.router, device=args.device, batch_size=args.batch_size)
    report(found, args.out_json)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "router",
        help="train and evaluate routers from `generate` results",
        description="Router training: build-data -> train -> eval -> thresholds (docs: router training).",
    )
    rs = p.add_subparsers(dest="router_command", metavar="STEP")
    rs.required = True

    b = rs.add_parser("build-data", help="labelled router examples from `arbitrage run --policy generate` results")
    b.add_argument("results", nargs="+", help="results.jsonl files (or their run directories)")
    b.add_argument("--out", required=True, help="directory for train.jsonl, validation.jsonl and meta.json")
    b.add_argument("--margin", type=float, default=0.0, help="label = 1 iff A > margin (default 0)")
    b.add_argument(
        "--no-balance",
        action="store_true",
        help="keep the training split's class mix (default: downsample the majority class)",
    )
    b.add_argument("--val-fraction", type=_fraction, default=0.2, help="share of problems held out (default 0.2)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--separator", help="step separator with escapes (default: the one the run recorded, else \\n\\n)")
    b.add_argument("--no-author-tags", action="store_true", help="leave out the 'Model 0: '/'Model 1: ' tags")
    b.add_argument(
        "--label-from",
        choices=("mean", "max", "first"),
        default="mean",
        help="with several target samples per step (generate --target-samples N): the target score the "
        "advantage is taken from (default: mean; all three agree for one sample)",
    )
    b.set_defaults(func=cmd_build_data)

    t = rs.add_parser("train", help="train a router on build-data's output")
    t.add_argument("--data", required=True, help="directory written by `arbitrage router build-data`")
    t.add_argument("--out", required=True, help="router directory to write")
    t.add_argument(
        "--kind",
        choices=KINDS,
        default="classifier",
        help="classifier: fine-tune --base as a token classifier (the paper); probe: logistic regression "
        "on the draft's log-probs/entropies/length (no model call at run time)",
    )
    t.add_argument("--base", help="classifier: causal LM or PRM to start from (local path or Hugging Face id)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--shuffle-labels", action="store_true", help="control: train on randomly permuted labels")
    t.add_argument(
        "--classes",
        type=int,
        default=2,
        choices=(2, 4, 10),
        help="2 (escalate/keep, default), or 4 / 10 classes by quantiles of the advantage on the training "
        "split; y_hat = the probability mass of the classes whose mean advantage is above 0",
    )
    t.add_argument("--ordinal", action="store_true", help="an ordinal (cumulative-logit) head over the classes")
    g = t.add_argument_group("classifier")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-5, the paper's for a 1.5B base)")
    g.add_argument("--epochs", type=float, help="default 3")
    g.add_argument("--batch-size", type=int, help="per device (default 8)")
    g.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    g.add_argument("--warmup", type=float, help="warmup as a fraction of the steps (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-length", type=int, help="tokens per input; longer ones lose their oldest (default 4096)")
    g.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    g.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too")
    g.add_argument("--gradient-checkpointing", action="store_true")
    q = t.add_argument_group("probe")
    q.add_argument(
        "--probe-features",
        help="comma-separated groups from logprobs,entropies,shape,hidden "
        "(default: logprobs,entropies,shape as the data has them)",
    )
    q.add_argument("--C", type=float, help="inverse L2 strength (default: chosen by grouped cross-validation)")
    q.add_argument(
        "--decide-after",
        type=int,
        metavar="K",
        help="read only the draft's first K tokens of each step (run it with `--decide-after K`)",
    )
    t.set_defaults(func=cmd_train)

    e = rs.add_parser("eval", help="Spearman, ROC-AUC, per-class accuracy and oracle agreement on held-out steps")
    e.add_argument("--router", help="router directory (either kind)")
    e.add_argument(
        "--ks",
        help="instead: fit the probe recipe on the first K tokens for each K (e.g. 1,2,4,8,full) "
        "and report held-out Spearman and ROC-AUC against K",
    )
    e.add_argument("--data", required=True, help="build-data directory (its validation split) or an examples file")
    e.add_argument("--tau", type=float, default=0.5, help="escalate iff y_hat > tau (default 0.5)")
    e.add_argument("--oracle-tau", type=float, default=0.0, help="the oracle escalates iff A > this (default 0)")
    e.add_argument("--out-json", help="write the figures here")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=16)
    e.set_defaults(func=cmd_eval)

    h = rs.add_parser(
        "thresholds",
        help="the router and RSD thresholds that escalate given shares of the steps "
        "of `generate` results (for sweep points at chosen escalation rates)",
    )
    h.add_argument("results", nargs="+", help="`generate` results.jsonl files (or their run directories)")
    h.add_argument(
        "--rates",
        type=_rate_list,
        default=[0.2, 0.4, 0.6],
        help="target escalation rates, comma-separated (default 0.2,0.4,0.6)",
    )
    h.add_argument("--router", help="router directory (either kind); without it only RSD thresholds")
    h.add_argument("--out-json", help="write the thresholds here")
    h.add_argument("--device", default="auto")
    h.add_argument("--batch-size", type=int, default=16)
    h.set_defaults(func=cmd_thresholds)
