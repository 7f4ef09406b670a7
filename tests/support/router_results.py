"""`generate`-style results with a known routing signal, for the router-training tests (and the sharding test that
builds router data from them)."""

import json
import random

QUESTION = "Question: what is 12 * 12?"


def _sub(text, lps, ents, hidden=None):
    d = {"text": text, "stop": "separator", "n_tokens": len(lps), "logprobs": lps, "entropies": ents}
    if hidden is not None:
        d["last_hidden"] = hidden
    return d


def synthetic_results(path, n_problems=40, seed=0, hidden=False):
    """`generate`-style results where the advantage follows the draft: a step the draft was unsure of (low
    log-probs) and that ends "= 150" is one the target improves on; sure steps ending "= 144" are kept."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_problems):
        steps = []
        for k in range(rng.randint(2, 5)):
            bad = rng.random() < 0.4
            n = rng.randint(3, 8)
            lps = [round(rng.gauss(-2.0 if bad else -0.3, 0.4), 4) for _ in range(n)]
            ents = [round(abs(rng.gauss(2.0 if bad else 0.6, 0.3)), 4) for _ in range(n)]
            text = f"12 * 12 = {150 if bad else 144}."
            pd = 0.2 if bad else 0.9
            pt = pd + (rng.uniform(0.1, 0.7) if bad else -rng.uniform(0.0, 0.3))
            h = [rng.gauss(1.0 if bad else -1.0, 1.0) for _ in range(4)] if hidden else None
            steps.append(
                {
                    "index": k,
                    "author": "target" if bad else "draft",
                    "text": "12 * 12 = 144." if bad else text,
                    "stop": "separator",
                    "n_tokens": n,
                    "escalated": bad,
                    "scores": {"prm_draft": pd, "prm_target": pt, "advantage": pt - pd},
                    "draft": _sub(text, lps, ents, h),
                    "target": None,
                    "seconds": {},
                }
            )
        rows.append({"id": f"p{i}", "question": QUESTION, "gold": "144", "steps": steps})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
