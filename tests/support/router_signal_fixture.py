"""A small real setting for router training tests: tiny trained draft/target LMs on an iterated-map task, an
exact step checker as PRM, and `generate` results recorded by the real engine.

Task: "Start at 4. Apply x -> 7x+3 mod 10, 3 times.", solved one step per application ("7*4+3=1",
"7*1+3=0", "7*0+3=3") and a final "The answer is \\boxed{3}". Both models are checkpoints of one training run
of a tiny Qwen2 LM on fresh problems: the draft early (it has learnt part of the 300-entry table and is unsure
of the rest), the target late. The draft samples (temperature 1), the target is greedy. The checker scores a
step 1 when it is right given the accepted steps (a wrong earlier step establishes its wrong value).

`python tests/router_signal_fixture.py OUT [DRAFT_STEPS TARGET_STEPS N_PROBLEMS]` (defaults 400 1200 300) trains
the models into OUT/draft and OUT/target (about 20 minutes on a busy 2-core machine; skipped when OUT/target
exists) and records the `generate` run (OUT/gen, OUT/router_generate.jsonl.gz). The committed
tests/fixtures/router_generate.jsonl.gz and tests/fixtures/router_models/ come from a run with the defaults;
`cp -r tests/fixtures/router_models OUT` first to re-record the data without training.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence

import torch

from arbitrage.types import Problem, ScoreRequest

SEP = "\n\n"
TEMPLATE = "{question}\n\n"
MULTIPLIERS = (3, 7, 9)
_Q = re.compile(r"^Start at (\d)\. Apply x -> (\d)x\+(\d) mod 10, (\d) times\.$")
_STEP = re.compile(r"^(\d)\*(\d)\+(\d)=(\d)$")
_FINAL = re.compile(r"^The answer is \\boxed\{(\d)\}$")


def make_question(rng: random.Random) -> tuple[int, int, int, int]:
    return rng.choice(MULTIPLIERS), rng.randrange(10), rng.randrange(10), rng.randint(3, 6)


def question_text(a: int, b: int, x: int, n: int) -> str:
    return f"Start at {x}. Apply x -> {a}x+{b} mod 10, {n} times."


def solution(a: int, b: int, x: int, n: int) -> str:
    steps = []
    for _ in range(n):
        y = (a * x + b) % 10
        steps.append(f"{a}*{x}+{b}={y}")
        x = y
    steps.append(f"The answer is \\boxed{{{x}}}")
    return SEP.join(steps)


def problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, x, k = make_question(rng)
        q = question_text(a, b, x, k)
        y = x
        for _ in range(k):
            y = (a * y + b) % 10
        out.append(Problem(id=f"s{seed}-{i}", question=q, prompt=TEMPLATE.replace("{question}", q), gold=str(y)))
    return out


class IteratedMapChecker:
    """Exact PRM: 1.0 if the candidate step is right after the accepted steps, else 0.0."""

    name = "prm"

    def _score(self, question: str, steps, cand) -> float:
        x, a, b, n = (int(g) for g in _Q.match(question).groups())
        for s in steps:  # the value as the accepted steps wrote it
            m = _STEP.match(s.text.strip())
            x = int(m.group(4)) if m else x
        text = cand.text.strip()
        if len(steps) < n:
            m = _STEP.match(text)
            return float(
                bool(m)
                and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (a, x, b)
                and int(m.group(4)) == (a * x + b) % 10
            )
        m = _FINAL.match(text)
        return float(bool(m) and int(m.group(1)) == x)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        return [[self._score(r.question, r.steps, c) for c in r.candidates] for r in requests]

    def release(self, key: str) -> None:
        pass


def char_tokenizer(out_dir: str):
    """Byte-level tokens, no merges: every character is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + 3,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(["0123456789+= abc"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    fast.save_pretrained(out_dir)
    return fast


def _batch(tok, rng: random.Random, batch: int):
    rows = []
    for _ in range(batch):
        q = make_question(rng)
        p = tok(TEMPLATE.replace("{question}", question_text(*q)))["input_ids"]
        rows.append((p, tok(solution(*q), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    n = max(len(p) + len(s) for p, s in rows)
    ids = torch.full((batch, n), tok.pad_token_id)
    labels = torch.full((batch, n), -100)
    mask = torch.zeros((batch, n), dtype=torch.long)
    for i, (p, s) in enumerate(rows):
        ids[i, : len(p) + len(s)] = torch.tensor(p + s)
        labels[i, len(p) : len(p) + len(s)] = torch.tensor(s)  # loss on the solution only
        mask[i, : len(p) + len(s)] = 1
    return ids, mask, labels


def train_checkpoints(
    out: str,
    draft_steps: int,
    target_steps: int,
    hidden: int = 64,
    seed: int = 0,
    batch: int = 64,
    lr: float = 3e-3,
    log=print,
) -> None:
    """One training run; OUT/draft is its weights after `draft_steps`, OUT/target after `target_steps`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = char_tokenizer(os.path.join(out, "draft"))
    char_tokenizer(os.path.join(out, "target"))
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = random.Random(seed + 1000)
    t0 = time.time()
    for step in range(1, target_steps + 1):
        ids, mask, labels = _batch(tok, rng, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            log(f"step {step}/{target_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if step in (draft_steps, target_steps):
            model.save_pretrained(os.path.join(out, "draft" if step == draft_steps else "target"))


def record_generate(models_dir: str, out_dir: str, n: int, seed: int = 7, temperature: float = 1.0):
    """`generate` over n fresh problems with the trained models and the checker; returns the run's metrics."""
    from arbitrage.backends.hf import HFGenerator
    from arbitrage.engine import EngineConfig, Models
    from arbitrage.run import RunConfig, run

    kw = dict(device="cpu", dtype="float32", seed=seed)
    models = Models(
        draft=HFGenerator.from_pretrained(
            os.path.join(models_dir, "draft"), name="draft", temperature=temperature, **kw
        ),
        target=HFGenerator.from_pretrained(os.path.join(models_dir, "target"), name="target", temperature=0.0, **kw),
        prm=IteratedMapChecker(),
    )
    cfg = RunConfig(
        policy="generate",
        out=out_dir,
        data="iterated-map",
        template=TEMPLATE,
        progress=False,
        engine=EngineConfig(max_steps=8, max_step_tokens=24, max_total_tokens=200, concurrency=16),
    )
    return run(cfg, models=models, problems=problems(n, seed))


def main(argv: list[str]) -> int:
    out = argv[0]
    torch.set_num_threads(1)
    draft_steps, target_steps, n = (int(x) for x in (argv[1:4] if len(argv) >= 4 else (400, 1200, 300)))
    if not os.path.isfile(os.path.join(out, "target", "model.safetensors")):
        train_checkpoints(out, draft_steps, target_steps)
    m = record_generate(out, os.path.join(out, "gen"), n)
    print({k: m[k] for k in ("n", "accuracy", "escalation_rate", "advantage_positive_rate") if k in m})
    with (
        open(os.path.join(out, "gen", "results.jsonl"), "rb") as f,
        gzip.open(os.path.join(out, "router_generate.jsonl.gz"), "wb") as g,
    ):
        shutil.copyfileobj(f, g)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
