"""Building the models of a run from what the user typed (a local directory, a Hugging Face id, the URL of an
OpenAI-compatible server, or a spec a plugin understands, e.g. `testbed:draft`). Each role's spec goes to the
first registered loader that accepts it (registry.py); only the models a policy needs are built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError
from .models import Models, roles_to_load
from .types import DEFAULT_SEPARATOR


@dataclass
class ModelOptions:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None  # torch CPU threads of in-process models (None: leave torch's setting)
    reuse_cache: bool = True
    prm_kind: str = "auto"  # value-head | token-cls | auto
    prm_format: str = "skywork"  # skywork | separator
    return_hidden: bool = False  # expose the draft's last hidden state (probe routers)
    server_concurrency: int = 16
    served_names: dict | None = None  # role -> model name on its server; "prm_tokenizer"/"router_tokenizer" too
    server_api: str = "completions"  # completions (vLLM, SGLang, llama.cpp /v1) | llamacpp (llama.cpp /completion)
    pooling_route: str = "pooling"  # pooling (vLLM POST /pooling) | embeddings (the paper's served plugins)
    fast_decode: bool = False  # in-process generators: static KV cache + compiled decode (static_kv.py)
    static_slots: int = 8  # problems a fast-path generator holds at once (set to the engine's concurrency)
    static_len: int = 4096  # tokens per problem in the static cache
    extra: dict | None = None  # settings that plugin loaders declare (registry.add_loader(options=...))


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def load_model(kind: str, spec: str, role: str, opts: ModelOptions, separator: str = DEFAULT_SEPARATOR):
    """One model: `kind` is generator, prm or router; the first registered loader that accepts `spec` builds it."""
    from .registry import registry

    return registry().find(kind, spec).load(spec, role, opts, separator)


def build_models(needs, specs: dict, opts: ModelOptions, separator: str = DEFAULT_SEPARATOR, optional=()) -> Models:
    """`needs`: the roles to build (a policy's `needs`); `specs` maps draft/target/prm/router to what the user
    gave. The router is built first, so a draft can be asked for the features the router reads (e.g. its last
    hidden state); the judge role is the target itself, which must be able to judge."""
    needs = set(needs)
    load = roles_to_load(needs)
    missing = [role for role in sorted(load) if not specs.get(role)]
    if missing:
        raise ConfigError("needs " + ", ".join(f"--{m}" for m in missing))
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    loaded: dict[str, object] = {}
    if "router" in load:
        loaded["router"] = load_model("router", specs["router"], "router", opts, separator)
        if "last_hidden" in getattr(loaded["router"], "draft_features", ()) and not opts.return_hidden:
            opts = dataclasses.replace(opts, return_hidden=True)  # the router reads it: the draft computes it
    for role in ("draft", "target"):
        if role in load:
            loaded[role] = load_model("generator", specs[role], role, opts, separator)
    if "prm" in load:
        loaded["prm"] = load_model("prm", specs["prm"], "prm", opts, separator)
    models = Models.assemble(loaded, needs, optional)
    link_speculation(models)
    return models


def link_speculation(models: Models) -> None:
    """Attach an in-process draft to an in-process target of the same vocabulary, so the target can let it propose
    tokens inside its steps (backends/speculative.py; a request asks for it with `gamma`)."""
    draft, target = models.draft, models.target
    if draft is None or target is None or not hasattr(target, "speculator") or not hasattr(target, "vocab_signature"):
        return  # only an in-process target (backends/hf.py) has both
    if (
        getattr(draft, "vocab_signature", None) == target.vocab_signature
        and draft is not target
        and getattr(draft, "static", None) is None
        and getattr(target, "static", None) is None
    ):
        target.speculator = draft


def load_chat_tokenizer(specs: dict):
    """The tokenizer whose chat template renders prompts: the draft's (or the target's) when it is in-process
    or names a tokenizer; None for a server."""
    from .backends.hf import load_tokenizer

    spec = specs.get("draft") or specs.get("target")
    if not spec or is_url(spec):
        raise ConfigError(
            "--template chat needs an in-process draft or target (a local directory or hub id) "
            "whose tokenizer has a chat template"
        )
    return load_tokenizer(spec)
