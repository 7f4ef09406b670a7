"""Train the testbed's draft and target LMs from scratch (CPU by default, CUDA with `device`).

Both are Llama-style causal LMs trained by the same recipe, differing only in size; both see the same
seeded stream of fresh training problems, with the loss on the solution tokens only. Any accuracy gap is
therefore a matter of capacity (and of what that capacity learns in the same number of steps).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .phrasing import PIECES as PHRASE_PIECES
from .phrasing import Style
from .recipe import SPECS, TASKS, ModelSpec, TrainConfig
from .task import Chain, iter_chains, make_chains, prompt, solution_text
from .tokenizer import build_tokenizer, save_tokenizer


def model_config(spec: ModelSpec, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        num_hidden_layers=spec.layers,
        intermediate_size=spec.intermediate,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode(
    tokenizer, chain: Chain, style: Style | None = None, rng: random.Random | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + solution + eos, and labels that mask the prompt with -100. With `style` (the
    phrased task), each step's phrasing is drawn from that style with `rng`."""
    p = tokenizer(prompt(chain.question())).input_ids
    s = tokenizer(solution_text(chain, style, rng), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return p + s, [-100] * len(p) + s


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batches(
    tokenizer, seed: int, batch_size: int, bucket: int = 8, role: str = "draft", task: str = "plain"
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches of fresh problems. `bucket` batches' worth of problems are drawn at a time,
    sorted by length and cut into batches (served in a seeded random order), so little compute goes to padding.
    The phrased task draws every step's phrasing from `role`'s style with a stream of its own (independent of
    the other role's)."""
    stream = iter_chains("train", seed)  # the same problems for every role: they depend on the seed only
    rng = random.Random(f"batches/{seed}")
    style = Style(role) if task == "phrased" else None
    style_rng = random.Random(f"phrasing/{role}/{seed}")
    while True:
        pool = sorted(
            (encode(tokenizer, next(stream), style, style_rng) for _ in range(bucket * batch_size)),
            key=lambda e: len(e[0]),
        )
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield collate(chunk, tokenizer.pad_token_id)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine down to 10%


def task_tokenizer(task: str):
    """The tokenizer of `task` ("plain" or "phrased"; the phrased task adds its phrasings' pieces)."""
    if task not in TASKS:
        raise ValueError(f"unknown testbed task {task!r}; expected one of {', '.join(TASKS)}")
    return build_tokenizer(extra_pieces=PHRASE_PIECES if task == "phrased" else ())


def train_model(
    role: str,
    out_dir: str | Path,
    cfg: TrainConfig,
    spec: ModelSpec | None = None,
    log: Callable[[str], None] = print,
    task: str = "plain",
) -> dict:
    """Train one model (`role` is "draft" or "target") and save it with its tokenizer under `out_dir/role`.

    Initialisation and data depend on `cfg.seed` only, so a run is repeatable on the same device and library
    versions (CUDA kernels may differ from CPU ones in the last bits)."""
    spec = spec or SPECS[role]
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    from .evaluate import answer_accuracy

    tokenizer = task_tokenizer(task)
    # transformers declares PreTrainedModel.to with functools.wraps(nn.Module.to), whose type takes the model as
    # the first argument
    model = LlamaForCausalLM(model_config(spec, tokenizer)).to(device)  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    data = batches(tokenizer, cfg.seed, cfg.batch_size, role=role, task=task)
    log(f"{role} ({task} task): {n_params:,} parameters, {cfg.steps} steps of {cfg.batch_size} problems")
    val_chains = make_chains("validation", cfg.eval_n, cfg.seed) if cfg.eval_every > 0 else []
    curve: list[dict] = []
    model.train()
    start, running, eval_seconds = time.time(), None, 0.0
    for step in range(cfg.steps):
        batch = {k: v.to(device) for k, v in next(data).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log(f"{role} step {step + 1}/{cfg.steps} loss {running:.4f} ({time.time() - start - eval_seconds:.0f}s)")
        if val_chains and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            t0 = time.time()
            model.eval()
            acc = answer_accuracy(model, tokenizer, val_chains)
            model.train()
            eval_seconds += time.time() - t0
            curve.append(
                {
                    "step": step + 1,
                    "problems_seen": (step + 1) * cfg.batch_size,
                    "loss": round(running, 4),
                    "validation_answer_accuracy": round(acc, 3),
                }
            )
            log(f"{role} step {step + 1}: validation answer accuracy {acc:.3f} on {len(val_chains)} problems")
    seconds = time.time() - start - eval_seconds
    assert running is not None  # at least one step was taken
    model.eval().to("cpu")
    out = Path(out_dir) / role
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return {
        "role": role,
        "task": task,
        "parameters": n_params,
        "spec": asdict(spec),
        "train_seconds": round(seconds, 1),
        "final_loss": round(running, 4),
        "problems_seen": cfg.steps * cfg.batch_size,
        "validation_curve": curve,
    }


def environment() -> dict:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


CARD = "card.json"


def write_card(out_dir: str | Path, card: dict) -> None:
    """The models' card: the command that made them, the seed, the recipe, the accuracies, the environment."""
    path = Path(out_dir) / CARD
    path.write_text(json.dumps(card, indent=2) + "\n")
