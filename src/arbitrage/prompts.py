"""Prompt templates: the text the generators continue for a question (a built-in template, a user's literal
string or file with "{question}", or the tokenizer's own chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES = {
    # Qwen2.5-Math's chain-of-thought prompt, written out as raw text (no tokenizer needed).
    "qwen-math-cot": (
        "<|im_start|>system\n" + INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "plain": "{question}\n" + INSTRUCTION + "\n\n",
}


def resolve_template(template: str) -> str:
    """A template name, an `@file`, or a literal string with "{question}"; returns the literal ("chat" as is)."""
    if template == "chat" or template in TEMPLATES:
        return TEMPLATES.get(template, template)
    if template.startswith("@"):
        try:
            template = Path(template[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"prompt template file {template[1:]}: {exc.strerror or exc}") from None
    if "{question}" not in template:
        raise ConfigError(
            f"unknown prompt template {template[:60]!r}: use one of "
            f"{', '.join(list(TEMPLATES) + ['chat'])}, a string containing {{question}}, "
            "or @path/to/template.txt"
        )
    return template


def format_prompt(question: str, template: str = "qwen-math-cot", tokenizer: Any = None) -> str:
    """The text the generators continue for `question` (see module constants for the templates)."""
    template = resolve_template(template)
    if template != "chat":
        # str.replace, not str.format: questions and templates are full of LaTeX braces.
        return template.replace("{question}", question)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "prompt template 'chat' needs a tokenizer with a chat template "
            "(use 'qwen-math-cot' or 'plain' for models without one)"
        )
    messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question}]
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        messages = [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]
        try:
            out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise ConfigError(f"the tokenizer's chat template failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(out, str):
        raise ConfigError(f"the tokenizer's chat template returned {type(out).__name__}, expected text")
    return out
