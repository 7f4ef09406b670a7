"""The demo's report: from the sweep's results files, the figures with their uncertainty (evidence.py) and the
testbed's own measurements with the exact checker (analysis.py). Nothing here runs a model.

`demo.json` carries, for scripts: n_test, draft_accuracy, target_accuracy, cost_ratio (draft / target time per
token at batch size 1, measured in the draft-only and target-only points), wasted_rsd_escalations, and
router_vs_rsd / router_vs_target / ..., each {speedup, ci95: [lo, hi], accuracy} or null with a `reason`.
"""

from __future__ import annotations

from pathlib import Path

from .. import evidence
from ..frontier import latency_at, pareto_frontier
from ..results import read_records
from ..sweep_report import label
from . import analysis
from .demo_points import NO_VERIFY


def _point(out: Path, m: dict) -> evidence.Point:
    return evidence.Point.of(label(m), m["policy"], m.get("threshold"), read_records(out / "sweep" / m["dir"]))


def _brief(c: dict | None) -> dict | None:
    if c is None:
        return None
    return {
        "speedup": c.get("speedup"),
        "ci95": c.get("ci95"),
        "accuracy": c.get("accuracy"),
        "n": c.get("n"),
        **({"reason": c["reason"]} if c.get("reason") else {}),
        **({"note": c["note"]} if c.get("note") else {}),
    }


def cost_ratio(by_policy: dict) -> dict | None:
    """Draft and target seconds per token at batch size 1, from the draft-only and target-only points."""
    d, t = by_policy.get("draft", [None])[0], by_policy.get("target", [None])[0]
    if not d or not t or not d["draft_tokens_accepted"] or not t["target_tokens"]:
        return None
    d_tok = d["draft_s"] / d["draft_tokens_accepted"]
    t_tok = t["target_s"] / t["target_tokens"]
    return {
        "ratio": d_tok / t_tok,
        "draft_ms_per_token": 1000 * d_tok,
        "target_ms_per_token": 1000 * t_tok,
        "concurrency": d.get("concurrency"),
    }


def summarize(
    out: Path, metrics: list[dict], cfg, counts: dict, router_eval: dict, k_curve: list, thresholds: dict
) -> dict:
    by_policy: dict[str, list[dict]] = {}
    for m in metrics:
        by_policy.setdefault(m["policy"], []).append(m)
    points = {p: [_point(out, m) for m in ms] for p, ms in by_policy.items()}
    n_boot, seed = cfg.n_boot, cfg.seed

    def vs(a: str, b: str, **kw) -> dict | None:
        if a not in points or b not in points:
            return None
        return evidence.matched(points[a], points[b], n_boot=n_boot, seed=seed, **kw)

    comparisons = {f"router_vs_{b}": vs("router", b) for b in ("rsd", "confidence", "glimpse")}
    step_policies = [
        p
        for p in points
        if p not in ("draft", "target", "oracle", "assisted", "target+speculation") and not p.endswith(NO_VERIFY)
    ]
    for p in step_policies:  # within one point of the target's accuracy, against the target's point
        comparisons[f"{p}_vs_target"] = vs(p, "target", relative_to_b_accuracy=-0.01)
        if "assisted" in points:  # token-level speculation alone, at (one point below) its accuracy
            comparisons[f"{p}_vs_assisted"] = vs(p, "assisted", relative_to_b_accuracy=-0.01)
        if p + NO_VERIFY in points:  # what reusing the draft's work buys the same policy
            comparisons[f"{p}_vs_{p}{NO_VERIFY}"] = vs(p, p + NO_VERIFY)
    for p in ("router-hidden", "router-classifier"):
        if p in points:
            comparisons[f"{p}_vs_rsd"] = vs(p, "rsd")
            comparisons[f"{p}_vs_router"] = vs(p, "router")
    if "rsd" + NO_VERIFY in points and "router" + NO_VERIFY in points:
        comparisons["router-noverify_vs_rsd-noverify"] = vs("router" + NO_VERIFY, "rsd" + NO_VERIFY)
    for p in ("target+speculation", "assisted"):
        if p in points:
            comparisons[f"{p}_vs_target"] = vs(p, "target", relative_to_b_accuracy=-0.01)
    best_vs_target = max(
        (
            c
            for k, c in comparisons.items()
            if k.endswith("_vs_target") and c and c.get("speedup") is not None and k.split("_vs_")[0] in step_policies
        ),
        key=lambda c: c["speedup"],
        default=None,
    )
    early = next((p for p in points if p.startswith("router-k") and not p.endswith(NO_VERIFY)), None)
    if early:
        comparisons["early_router_vs_router"] = vs(early, "router")
        comparisons["early_router_vs_target"] = vs(early, "target", relative_to_b_accuracy=-0.01)
        comparisons["early_router_vs_rsd"] = vs(early, "rsd")

    # Discarded draft tokens per problem along each frontier, at the accuracy the early router is compared at.
    discarded = None
    if early and comparisons["early_router_vs_router"] and comparisons["early_router_vs_router"].get("accuracy"):
        acc = comparisons["early_router_vs_router"]["accuracy"]
        per: dict[str, float | None] = {}
        for name in ("router", early):
            front = pareto_frontier(by_policy[name])
            per[name] = latency_at(front, acc, x="draft_tokens_discarded_per_problem")  # along the frontier
        router_d, early_d = per.get("router"), per[early]
        discarded = {
            "accuracy": acc,
            "per_problem": per,
            "reduction": (1 - early_d / router_d) if router_d and early_d is not None else None,
        }

    # Accuracy differences, paired: each policy's most accurate point against the target and the best RSD point.
    def best(name):
        ms = by_policy.get(name) or []
        if not ms:
            return None
        m = max(ms, key=lambda x: (x["accuracy"], -x["latency_s_mean"]))
        return _point(out, m)

    tests = []
    for a, b in (("router", "target"), ("router", "rsd"), ("rsd", "target"), ("oracle", "target")):
        pa, pb = best(a), best(b)
        if pa and pb:
            tests.append(evidence.sign_test(pa, pb))

    wasted = {
        f"{m['threshold']:g}": analysis.wasted_escalations(read_records(out / "sweep" / m["dir"]))
        for m in by_policy.get("rsd", [])
    }
    pooled = {
        "escalations": sum(w["escalations"] for w in wasted.values()),
        "wasted": sum(w["wasted"] for w in wasted.values()),
    }
    pooled["wasted_fraction"] = pooled["wasted"] / pooled["escalations"] if pooled["escalations"] else None
    useful = {}  # per policy, pooled over its points: the share of escalations where only the target was right
    for p in step_policies:
        wasted_per_point = [analysis.wasted_escalations(read_records(out / "sweep" / m["dir"])) for m in by_policy[p]]
        n, w = sum(x["escalations"] for x in wasted_per_point), sum(x["wasted"] for x in wasted_per_point)
        useful[p] = {"escalations": n, "useful": n - w, "useful_share": round((n - w) / n, 4) if n else None}
    spec = {label(m): m["speculation"] for m in metrics if m.get("speculation")}
    assisted = by_policy.get("assisted", [None])[0]
    assisted_acceptance = None
    if assisted:
        proposed = assisted["draft_tokens_accepted"] + assisted["draft_tokens_discarded"]
        assisted_acceptance = {
            "accepted": assisted["draft_tokens_accepted"],
            "proposed": proposed,
            "rate": round(assisted["draft_tokens_accepted"] / proposed, 4) if proposed else None,
        }
    acc = {p: ms[0]["accuracy"] for p, ms in by_policy.items() if p in ("draft", "target", "oracle")}
    keep = (
        "policy",
        "threshold",
        "n",
        "accuracy",
        "accuracy_se",
        "escalation_rate",
        "latency_s_mean",
        "latency_s_p50",
        "target_calls",
        "draft_tokens_discarded_per_problem",
        "dir",
    )
    table = [{k: m.get(k) for k in keep} for m in metrics]
    generate = read_records(out / "generate")
    oracle_dir = by_policy.get("oracle", [{}])[0].get("dir")
    identical = analysis.identical_right_steps(read_records(out / "sweep" / oracle_dir)) if oracle_dir else None
    return {
        "n_test": by_policy["draft"][0]["n"] if "draft" in by_policy else None,
        "n_train": cfg.n_train,
        "draft_accuracy": acc.get("draft"),
        "target_accuracy": acc.get("target"),
        "cost_ratio": (cost_ratio(by_policy) or {}).get("ratio"),
        "cost": cost_ratio(by_policy),
        "wasted_rsd_escalations": {"pooled": pooled, "by_threshold": wasted},
        "useful_escalations": useful,
        "identical_right_draft_steps": identical,
        "assisted_acceptance": assisted_acceptance,
        "speculation": spec,
        "best_step_policy_vs_target": _brief(best_vs_target),
        **{k: _brief(v) for k, v in comparisons.items()},
        "comparisons": comparisons,
        "discarded_draft_tokens": discarded,
        "oracle": next(
            (
                {
                    "accuracy": m["accuracy"],
                    "latency_s_mean": m["latency_s_mean"],
                    "escalation_rate": m["escalation_rate"],
                }
                for m in by_policy.get("oracle", [])
            ),
            None,
        ),
        "accuracy_tests": tests,
        "points": table,
        "thresholds": thresholds,
        "step_outcomes": {
            "generate_train": analysis.step_outcomes(generate),
            **({"oracle_test": analysis.step_outcomes(read_records(out / "sweep" / oracle_dir))} if oracle_dir else {}),
        },
        "router_data": counts,
        "router_eval": {
            name: {
                k: e.get(k)
                for k in (
                    "spearman",
                    "roc_auc",
                    "n",
                    "accuracy_escalate",
                    "accuracy_keep",
                    "oracle_agreement",
                    "decide_after",
                )
            }
            for name, e in router_eval.items()
        },
        "decide_after_curve": k_curve,
    }


def _f(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _cmp_line(name: str, c: dict | None) -> str:
    if c is None:
        return f"{name}: (no points)"
    if c.get("speedup") is None:
        return f"{name}: no ratio ({c.get('reason')})"
    ci = c.get("ci95")
    ci_s = f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
    return f"{name}: {c['speedup']:.2f}x{ci_s} at accuracy {c['accuracy']:.3f} (n = {c['n']})"


def format_report(s: dict) -> str:
    lines = [f"{'point':<22}{'acc':>7}{'±se':>6}{'esc':>7}{'lat (s)':>9}{'disc/prob':>10}{'tgt calls':>10}"]
    for p in s["points"]:
        name = p["policy"] if p["threshold"] is None else f"{p['policy']}@{p['threshold']:g}"
        esc = p["escalation_rate"]
        lines.append(
            f"{name:<22}{p['accuracy']:>7.3f}{p['accuracy_se']:>6.3f}"
            f"{'-' if esc is None else format(esc, '.3f'):>7}{p['latency_s_mean']:>9.4f}"
            f"{_f(p['draft_tokens_discarded_per_problem'], '.1f'):>10}{p['target_calls']:>10}"
        )
    cost = s.get("cost") or {}
    lines += [
        "",
        f"n = {s['n_test']} test problems; draft accuracy {_f(s['draft_accuracy'])}, target "
        f"{_f(s['target_accuracy'])}; cost per token draft / target {_f(s['cost_ratio'])} "
        f"({_f(cost.get('draft_ms_per_token'), '.2f')} / {_f(cost.get('target_ms_per_token'), '.2f')} ms)",
    ]
    w = s["wasted_rsd_escalations"]["pooled"]
    lines.append(
        f"RSD escalations where the target's step was no better (exact checker): {w['wasted']} of "
        f"{w['escalations']} ({_f(w['wasted_fraction'])})"
    )
    for key in (
        "router_vs_rsd",
        "router_vs_target",
        "router_vs_confidence",
        "router_vs_glimpse",
        "rsd_vs_target",
        "confidence_vs_target",
        "early_router_vs_router",
        "early_router_vs_rsd",
        "early_router_vs_target",
    ):
        if key in s and s[key] is not None:
            lines.append("latency " + _cmp_line(key.replace("_", " "), s[key]))
    shown = {
        "router_vs_rsd",
        "router_vs_target",
        "router_vs_confidence",
        "router_vs_glimpse",
        "rsd_vs_target",
        "confidence_vs_target",
        "early_router_vs_router",
        "early_router_vs_rsd",
        "early_router_vs_target",
    }
    for key, c in s.get("comparisons", {}).items():
        if key not in shown and c is not None:
            lines.append("latency " + _cmp_line(key.replace("_vs_", " vs "), _brief(c)))
    if s.get("identical_right_draft_steps"):
        i = s["identical_right_draft_steps"]
        lines.append(
            f"right draft steps token-identical to the target's (oracle run): {i['identical_to_target']} of "
            f"{i['right_draft_steps']} ({_f(i['share'])})"
        )
    if s.get("assisted_acceptance"):
        a = s["assisted_acceptance"]
        lines.append(f"assisted generation: {a['accepted']} of {a['proposed']} draft tokens accepted ({_f(a['rate'])})")
    for p, u in (s.get("useful_escalations") or {}).items():
        lines.append(
            f"useful escalations (only the target right, exact checker) {p}: {u['useful']} of "
            f"{u['escalations']} ({_f(u['useful_share'])})"
        )
    for p, sp in (s.get("speculation") or {}).items():
        lines.append(
            f"reuse of the draft in {p}: kept {_f(sp.get('acceptance_rate'))} of verified tokens, "
            f"{_f(sp.get('draft_acceptance_rate'))} of in-step proposals, "
            f"{_f(sp.get('tokens_per_target_forward'), '.2f')} tokens per target forward"
        )
    d = s.get("discarded_draft_tokens")
    if d:
        per = d["per_problem"]
        lines.append(
            "discarded draft tokens per problem at accuracy "
            f"{d['accuracy']:.3f}: "
            + ", ".join(f"{k} {_f(v, '.1f')}" for k, v in per.items())
            + f" ({_f(d['reduction'], '.0%') if d['reduction'] is not None else '-'} fewer)"
        )
    o = s.get("oracle")
    if o:
        lines.append(
            f"oracle (an upper bound, both models every step): accuracy {o['accuracy']:.3f} at "
            f"{o['latency_s_mean']:.4f} s, escalation {o['escalation_rate']:.3f}"
        )
    for t in s["accuracy_tests"]:
        lines.append(
            f"accuracy {t['a']} - {t['b']}: {t['difference']:+.3f} (only {t['a']} {t['only_a']}, only "
            f"{t['b']} {t['only_b']}; sign test p = {t['p_value']:.3f})"
        )
    so = s["step_outcomes"].get("oracle_test") or s["step_outcomes"]["generate_train"]
    sh = so["shares"]
    lines.append(
        f"step mix (exact checker, both models from the same context, {so['steps']} steps): both right "
        f"{_f(sh['both_right'])}, target only {_f(sh['target_only'])}, draft only {_f(sh['draft_only'])}, "
        f"both wrong {_f(sh['both_wrong'])}"
    )
    for name, e in s["router_eval"].items():
        lines.append(
            f"{name} on held-out generate steps: Spearman {_f(e.get('spearman'))}, ROC-AUC {_f(e.get('roc_auc'))}"
        )
    if s.get("decide_after_curve"):
        lines.append(
            "deciding after K draft tokens (held-out): "
            + ", ".join(
                f"K={'full' if r['decide_after'] is None else r['decide_after']}: AUC {_f(r['roc_auc'])}"
                for r in s["decide_after_curve"]
            )
        )
    if s.get("pareto_png"):
        lines.append(f"Pareto plot: {s['pareto_png']}")
    if s.get("seconds"):
        lines.append(
            "seconds (this invocation; finished points are not re-run): "
            + ", ".join(f"{k} {v}" for k, v in s["seconds"].items())
        )
    return "\n".join(lines)
