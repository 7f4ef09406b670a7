"""The one home for stand-ins, used by the tests and the benchmarks: tiny random-weight models built locally
(below), scripted routers (below), scripted generators / PRMs / routers that count their calls (`fakes`), and a
fake OpenAI-compatible server (`fake_server`).

Tiny random-weight models, for tests and examples that must run offline:

A byte-level BPE tokenizer is trained on the spot on a small math corpus, and Qwen2 configs are initialised
with a fixed seed; nothing comes from the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import os

import torch

_CORPUS = [
    "Let x = 3 + 4 = 7.\n\nThen 2 * 7 = 14.\n\nThe answer is \\boxed{14}.",
    "We compute \\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}.\n\nSo the answer is \\boxed{\\frac{5}{6}}.",
    "Model 0: first step\n\nModel 1: second step\n\n",
    "Question: what is 12 * 12?\n\n12 * 12 = 144.\n\n\\boxed{144}",
] * 20


def make_tokenizer(out_dir: str, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    fast.save_pretrained(out_dir)
    return fast


def _config(tokenizer, hidden: int, layers: int, heads: int, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **kw,
    )


def make_causal_lm(
    out_dir: str,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    init_scale: float = 0.2,
    eos_bias: float = 0.0,
    separator_bias: float = 0.0,
):
    """A random Qwen2 causal LM. `init_scale` makes logits peaky (greedy ties are then vanishingly rare);
    `separator_bias`/`eos_bias` push the lm head towards "\\n\\n"/eos so steps end on their own."""
    from transformers import Qwen2ForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tok = make_tokenizer(out_dir)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_config(tok, hidden, layers, heads, initializer_range=init_scale)).eval()
    if separator_bias or eos_bias:
        with torch.no_grad():
            direction = model.model.norm.weight.detach().clone()  # hidden states lean along the norm's gain
            sep_ids = tok("\n\n", add_special_tokens=False)["input_ids"]
            if separator_bias and len(sep_ids) == 1:
                model.lm_head.weight[sep_ids[0]] += separator_bias * direction / direction.norm()
            if eos_bias:
                model.lm_head.weight[tok.eos_token_id] += eos_bias * direction / direction.norm()
    model.save_pretrained(out_dir)
    return model, tok


def make_token_classifier(
    out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 2, seed: int = 1, router: bool = False
):
    """A random 2-label Qwen2ForTokenClassification (a token-classification PRM, or with `router` a router:
    with the arbitrage_router.json a trained router has)."""
    from transformers import Qwen2ForTokenClassification

    os.makedirs(out_dir, exist_ok=True)
    tok = make_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = _config(tok, hidden, layers, heads, initializer_range=0.2, num_labels=2)
    model = Qwen2ForTokenClassification(cfg).eval()
    model.save_pretrained(out_dir)
    if router:
        from ..formats import write_router_meta

        write_router_meta(
            out_dir,
            {
                "kind": "classifier",
                "separator": "\n\n",
                "author_tags": True,
                "note": "random weights (arbitrage.testing)",
            },
        )
    return model, tok


def make_value_head_prm(out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 2, seed: int = 2):
    """A random PRM in the Skywork-o1-Open-PRM layout: a Qwen2 base plus `v_head.summary` (Linear(hidden, 1))."""
    from safetensors.torch import save_file
    from transformers import Qwen2Model

    os.makedirs(out_dir, exist_ok=True)
    tok = make_tokenizer(out_dir)
    torch.manual_seed(seed)
    base = Qwen2Model(_config(tok, hidden, layers, heads, initializer_range=0.2)).eval()
    base.config.architectures = ["Qwen2ForPrmModel"]
    base.save_pretrained(out_dir)
    head = {"v_head.summary.weight": torch.randn(1, hidden) * 0.5, "v_head.summary.bias": torch.zeros(1)}
    save_file(head, os.path.join(out_dir, "value_head.safetensors"))
    return base, tok


class EveryOtherRouter:
    """A scripted router that escalates every other step (y_hat 1 at odd step indices, else 0), so that each model
    extends contexts the other one wrote: what the KV-reuse and fast-path checks need."""

    name = "router"

    def predict(self, requests):
        return [1.0 if len(r.steps) % 2 else 0.0 for r in requests]

    def release(self, key):
        pass


class ShareRouter:
    """A scripted router that escalates step k of problem p iff a hash of (p, k) falls below `share` (y_hat 1, else
    0): a fixed, seeded share of the steps, the same decisions in every run and under every scheduling, with no
    model call. For benchmarks that must compare engines or sizes on exactly the same work."""

    name = "router"

    def __init__(self, share: float):
        self.share = share

    def escalates(self, key: str, step_index: int) -> bool:
        h = hashlib.sha256(f"{key}:{step_index}".encode()).digest()
        return int.from_bytes(h[:4], "big") / 2**32 < self.share

    def predict(self, requests):
        return [1.0 if self.escalates(r.key, len(r.steps)) else 0.0 for r in requests]

    def release(self, key):
        pass
