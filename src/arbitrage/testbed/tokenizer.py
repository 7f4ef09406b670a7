"""A small fixed-vocabulary tokenizer for the testbed task.

Every character of printable ASCII is a token, plus a few multi-character pieces the task repeats
(" = ", " mod ", the separator "\\n\\n", ...), so sequences stay short and the step separator is one token.
Digits are always single tokens. Built with the `tokenizers` library and wrapped in
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(dir)` loads it like any other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Longest first: the pre-tokenizer regex tries the alternatives in this order.
PIECES = ("The answer is ", "What is ", "\\boxed{", " mod ", "Let ", " = ", " + ", " - ", " * ", ". ", "\n\n")
CHARS = tuple(chr(c) for c in range(32, 127)) + ("\n",)
# A chat renders as the task's own prompt: the last user message (the question), then the step separator.
CHAT_TEMPLATE = (
    "{% set ns = namespace(q='') %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.q = m['content'] %}{% endif %}{% endfor %}{{ ns.q + '\\n\\n' }}"
)


def build_tokenizer(model_max_length: int = 512, extra_pieces: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The plain task's tokenizer; `extra_pieces` (the phrased task's) are added after the plain vocabulary, so
    the plain task's ids do not change, and matched longest first."""
    vocab: dict[str, int] = {}
    for piece in (*SPECIAL.values(), *PIECES, *extra_pieces, *CHARS):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk_token"]))
    pieces = PIECES if not extra_pieces else tuple(sorted({*PIECES, *extra_pieces}, key=len, reverse=True))
    pattern = "|".join(re.escape(p) for p in pieces) + r"|[\s\S]"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side="left", **SPECIAL
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """`save_pretrained`, naming the class `PreTrainedTokenizerFast` and keeping the chat template in
    tokenizer_config.json, so older transformers (and vLLM) load it too."""
    tokenizer.save_pretrained(directory)
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if getattr(tokenizer, "chat_template", None):  # older transformers read it here (newer: chat_template.jinja)
        config["chat_template"] = tokenizer.chat_template
    path.write_text(json.dumps(config, indent=2) + "\n")
