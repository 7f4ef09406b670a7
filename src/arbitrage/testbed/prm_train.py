"""A trained PRM for the testbed: a causal LM with a scalar value head (the Skywork-o1-Open-PRM layout that
`scoring.hf.HFPRM` loads), trained on the exact checker's verdicts of the draft's and the target's own steps on
*training* problems.

Unlike the noisy checker, which costs nothing and errs at random, this PRM costs a real forward pass per step
through the ordinary PRM path and errs systematically: it is a draft-sized LM initialised from the trained
draft (as Skywork's 1.5B PRM starts from a 1.5B math LM), so it finds hard the steps a small model finds hard.

The data: step-wise rollouts on training problems in which, at every step, draft and target each write a
candidate from the same context (half of the problems greedily, half sampled at temperature 1), the checker
labels both, and a coin decides whose step is kept, so contexts mix both authors and hold wrong steps, as
under a routing policy. Rows are laid out by `formats.PRMFormat` ("skywork"), exactly as the PRM reads them at
run time.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..formats import PRMFormat
from ..types import Author, Step
from .phrasing import parse_final
from .prm import check_step
from .task import SEPARATOR, Chain, make_chains, prompt

Log = Callable[[str], None]
MAX_STEPS = 8
MAX_STEP_TOKENS = 40


def _seed(*parts) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def _kind(chain: Chain, n_op_steps: int) -> str:
    return chain.ops[n_op_steps].kind if n_op_steps < len(chain.ops) else "answer"


@torch.no_grad()
def _write_steps(model, tokenizer, contexts: Sequence[str], sample: bool, seed: int) -> list[str]:
    """One step per context (up to the separator or end-of-sequence), greedy or sampled at temperature 1."""
    if not contexts:
        return []
    sep_id = tokenizer.convert_tokens_to_ids(SEPARATOR)
    enc = tokenizer(list(contexts), return_tensors="pt", padding=True)
    if sample:
        torch.manual_seed(seed)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    out = model.generate(
        **enc,
        max_new_tokens=MAX_STEP_TOKENS,
        eos_token_id=[sep_id, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return [t.split(SEPARATOR)[0].strip() for t in texts]


def collect_steps(
    models_dir: str | Path, split: str, n_problems: int, seed: int = 0, batch_size: int = 128, log: Log = print
) -> list[dict]:
    """Labelled candidate steps of both models (see the module docstring), one dict per candidate."""
    from .evaluate import load_model

    models = {role: load_model(models_dir, role) for role in ("draft", "target")}
    chains = make_chains(split, n_problems, seed)
    rng = random.Random(f"prm-rollouts/{split}/{seed}")
    examples: list[dict] = []
    t0 = time.time()
    for b in range(0, len(chains), batch_size):
        batch = chains[b : b + batch_size]
        sample = [(b + i) % 2 == 1 for i in range(len(batch))]
        history: list[list[tuple[str, str]]] = [[] for _ in batch]  # (author, text) accepted so far
        live = list(range(len(batch)))
        for round_ in range(MAX_STEPS):
            if not live:
                break
            contexts = {i: prompt(batch[i].question()) + "".join(t + SEPARATOR for _, t in history[i]) for i in live}
            written: dict[str, dict[int, str]] = {}
            for role, (model, tok) in models.items():
                written[role] = {}
                for mode in (False, True):
                    rows = [i for i in live if sample[i] == mode]
                    texts = _write_steps(
                        model, tok, [contexts[i] for i in rows], mode, seed=_seed(seed, b, round_, role)
                    )
                    written[role].update(zip(rows, texts))
            still = []
            for i in live:
                chain, prior = batch[i], [t for _, t in history[i]]
                n_ops = sum(1 for t in prior if parse_final(t) is None)
                for role in ("draft", "target"):
                    text = written[role][i]
                    ok, _ = check_step(chain.question(), prior, text)
                    examples.append(
                        {
                            "problem": f"{split}-{seed}-{b + i}",
                            "question": chain.question(),
                            "steps": [list(s) for s in history[i]],
                            "candidate": text,
                            "author": role,
                            "label": int(ok),
                            "kind": _kind(chain, n_ops),
                            "sampled": sample[i],
                        }
                    )
                keep = "target" if rng.random() < 0.5 else "draft"
                text = written[keep][i]
                history[i].append((keep, text))
                if text and parse_final(text) is None and len(history[i]) < MAX_STEPS:
                    still.append(i)
            live = still
        log(
            f"prm data ({split}): {min(b + batch_size, len(chains))}/{len(chains)} problems, "
            f"{len(examples)} labelled steps ({time.time() - t0:.0f}s)"
        )
    return examples


def _rows(examples: Sequence[dict], tokenizer, fmt: PRMFormat) -> list[list[int]]:
    def encode(text: str, special: bool = False):
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    def step(author: Author, text: str) -> Step:
        return Step(author=author, text=text, stop="separator", n_tokens=0)

    return [
        fmt.row_ids(encode, e["question"], [step(a, t) for a, t in e["steps"]], step(e["author"], e["candidate"]))
        for e in examples
    ]


class ValueHeadLM(torch.nn.Module):
    """A causal LM's body with Skywork's `v_head.summary`: the score is sigmoid(value) at a row's last token."""

    def __init__(self, body):
        super().__init__()
        self.model = body
        self.v_head = torch.nn.Module()
        self.v_head.summary = torch.nn.Linear(body.config.hidden_size, 1)
        torch.nn.init.zeros_(self.v_head.summary.weight)
        torch.nn.init.zeros_(self.v_head.summary.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.v_head.summary(hidden[:, -1]).squeeze(-1)  # left padding: the last column is the row's end


def _batch(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask


def train_prm(
    examples: Sequence[dict],
    init_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log: Log = print,
) -> dict:
    """Fine-tune `init_dir`'s LM (body and a new value head) on the examples' labels; save in the Skywork
    layout (one safetensors file: `model.*` and `v_head.summary.*`) with the tokenizer under `out_dir`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    lm = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    net = ValueHeadLM(lm.model)
    fmt = PRMFormat.named("skywork")
    rows = _rows(examples, tokenizer, fmt)
    labels = torch.tensor([float(e["label"]) for e in examples])
    order = list(range(len(rows)))
    rng = random.Random(f"prm-train/{seed}")
    total = epochs * math.ceil(len(rows) / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / total))
    net.train()
    t0, step, running = time.time(), 0, None
    for epoch in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            ids, mask = _batch([rows[j] for j in idx], tokenizer.pad_token_id)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(ids, mask), labels[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if step % 200 == 0 or step == total:
                log(f"prm step {step}/{total} (epoch {epoch + 1}) loss {running:.4f} ({time.time() - t0:.0f}s)")
    net.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = lm.config
    config.architectures = ["LlamaModel"]  # the body; the value head rides beside it as in Skywork's checkpoints
    config.save_pretrained(out)
    state = {f"model.{k}": v.contiguous() for k, v in net.model.state_dict().items()}
    state.update({f"v_head.summary.{k}": v.contiguous() for k, v in net.v_head.summary.state_dict().items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    from .tokenizer import save_tokenizer

    save_tokenizer(tokenizer, out)
    return {
        "examples": len(rows),
        "positive_share": round(float(labels.mean()), 4),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "optimizer_steps": total,
        "train_seconds": round(time.time() - t0, 1),
        "final_loss": round(running or 0.0, 4),
        "init": "the trained draft (body), value head zero-initialised",
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def evaluate_prm(prm_dir: str | Path, examples: Sequence[dict], bins: int = 10) -> dict:
    """Step-level accuracy (score > 0.5 against the checker), ROC-AUC, calibration (expected calibration error
    and a reliability table) and error rates per kind of step and per author, loading the PRM through the
    ordinary path (`scoring.hf.HFPRM`) and scoring each example as `arbitrage run` would."""
    from sklearn.metrics import roc_auc_score

    from ..scoring.hf import HFPRM
    from ..types import ScoreRequest

    prm = HFPRM.from_pretrained(
        str(prm_dir), kind="value-head", fmt="skywork", device="cpu", dtype="float32", reuse_cache=False
    )
    scores: list[float] = []
    for i in range(0, len(examples), 256):
        chunk = examples[i : i + 256]
        reqs = [
            ScoreRequest(
                key=f"e{i + j}",
                question=e["question"],
                steps=[Step(a, t, "separator", 0) for a, t in e["steps"]],
                candidates=[Step(e["author"], e["candidate"], "separator", 0)],
            )
            for j, e in enumerate(chunk)
        ]
        scores += [s[0] for s in prm.score(reqs)]
    labels = [e["label"] for e in examples]
    wrong = [int((s > 0.5) != bool(y)) for s, y in zip(scores, labels)]
    table, ece = [], 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        members = [(s, y) for s, y in zip(scores, labels) if lo <= s < hi or (k == bins - 1 and s == 1.0)]
        if members:
            conf = sum(s for s, _ in members) / len(members)
            freq = sum(y for _, y in members) / len(members)
            ece += len(members) / len(scores) * abs(conf - freq)
            table.append(
                {
                    "bin": f"{lo:.1f}-{hi:.1f}",
                    "n": len(members),
                    "mean_score": round(conf, 3),
                    "share_correct": round(freq, 3),
                }
            )
    groups: dict[str, dict[str, list[int]]] = {"kind": defaultdict(list), "author": defaultdict(list)}
    for e, w in zip(examples, wrong):
        groups["kind"][e["kind"]].append(w)
        groups["author"][e["author"]].append(w)
    false_accept = [w for w, y in zip(wrong, labels) if not y]
    false_reject = [w for w, y in zip(wrong, labels) if y]
    return {
        "n": len(examples),
        "accuracy": round(1 - sum(wrong) / len(wrong), 4),
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4) if 0 < sum(labels) < len(labels) else None,
        "ece": round(ece, 4),
        "reliability": table,
        "false_accept_rate": round(sum(false_accept) / max(1, len(false_accept)), 4),
        "false_reject_rate": round(sum(false_reject) / max(1, len(false_reject)), 4),
        "error_rate_by_kind": {
            k: {"n": len(v), "error_rate": round(sum(v) / len(v), 4)} for k, v in sorted(groups["kind"].items())
        },
        "error_rate_by_author": {
            k: {"n": len(v), "error_rate": round(sum(v) / len(v), 4)} for k, v in sorted(groups["author"].items())
        },
    }


def save_examples(examples: Sequence[dict], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(e) + "\n" for e in examples))


def load_examples(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
