"""Building the models of a run from what the user typed: a local directory, a Hugging Face id, or the URL
of an OpenAI-compatible server (http://HOST:PORT/v1). Only the models a policy needs are loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .engine import Models
from .errors import ConfigError
from .policies import Policy


@dataclass
class ModelOptions:
    separator: str = "\n\n"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    reuse_cache: bool = True
    prm_kind: str = "auto"          # value-head | token-cls | auto
    prm_format: str = "skywork"     # skywork | separator
    return_hidden: bool = False     # expose the draft's last hidden state (probe routers)
    server_concurrency: int = 16
    served_names: dict | None = None  # role -> model name on its server; "prm_tokenizer"/"router_tokenizer" too
    server_api: str = "completions"   # completions (vLLM, SGLang, llama.cpp /v1) | llamacpp (llama.cpp /completion)
    pooling_route: str = "pooling"    # pooling (vLLM POST /pooling) | embeddings (the paper's served plugins)


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def make_generator(spec: str, role: str, opts: ModelOptions):
    if is_url(spec):
        from .backends.openai_compat import OpenAICompletionsGenerator

        return OpenAICompletionsGenerator(spec, model=(opts.served_names or {}).get(role), name=role,
                                          separator=opts.separator, temperature=opts.temperature,
                                          top_p=opts.top_p, seed=opts.seed, concurrency=opts.server_concurrency,
                                          api=opts.server_api)
    from .backends.hf import HFGenerator

    return HFGenerator.from_pretrained(spec, name=role, separator=opts.separator, temperature=opts.temperature,
                                       top_p=opts.top_p, seed=opts.seed, device=opts.device, dtype=opts.dtype,
                                       reuse_cache=opts.reuse_cache,
                                       return_hidden=opts.return_hidden and role == "draft")


def make_prm(spec: str, opts: ModelOptions):
    if spec.startswith("testbed-checker"):
        from .testbed.prm import ArithmeticCheckerPRM

        return ArithmeticCheckerPRM.from_spec(spec, seed=opts.seed)
    if spec.startswith("judge:"):  # judge:URL -- a served causal LM reads P(yes) for "is this step correct?"
        from .scoring.judge import JudgePRM

        return JudgePRM(spec.split(":", 1)[1], model=(opts.served_names or {}).get("prm"),
                        separator=opts.separator, api=getattr(opts, "server_api", "completions"),
                        concurrency=opts.server_concurrency)
    if is_url(spec):
        from .backends.pooling import PoolingPRM

        names = opts.served_names or {}
        # A value-head PRM (Skywork layout) is served through the embeddings route by the paper's plugins.
        route = "embeddings" if opts.prm_kind == "value-head" else opts.pooling_route
        return PoolingPRM(spec, model=names.get("prm"), tokenizer=names.get("prm_tokenizer"), fmt=opts.prm_format,
                          separator=opts.separator, route=route, concurrency=opts.server_concurrency)
    from .scoring.hf import HFPRM

    return HFPRM.from_pretrained(spec, kind=opts.prm_kind, fmt=opts.prm_format, device=opts.device,
                                 dtype=opts.dtype, reuse_cache=opts.reuse_cache)


def make_router(spec: str, opts: ModelOptions):
    if is_url(spec):
        from .backends.pooling import PoolingRouter

        names = opts.served_names or {}
        # separator and author tags come from the router's own arbitrage_router.json, not from the run
        return PoolingRouter(spec, model=names.get("router"), tokenizer=names.get("router_tokenizer"),
                             route=opts.pooling_route, concurrency=opts.server_concurrency)
    from .scoring.hf import HFRouter

    try:  # a probe router (trained on draft features) is a directory with its own marker file
        from .router_training.probe import is_probe_router, load_probe_router

        if is_probe_router(spec):
            return load_probe_router(spec)
    except ImportError:
        pass
    return HFRouter.from_pretrained(spec, device=opts.device, dtype=opts.dtype, reuse_cache=opts.reuse_cache)


def build_models(policy: Policy, specs: dict, opts: ModelOptions) -> Models:
    """`specs` maps draft/target/prm/router to what the user gave; a policy's needed model must be there."""
    missing = [role for role in sorted(policy.needs) if not specs.get(role)]
    if missing:
        raise ConfigError(f"policy {policy.name!r} needs " + ", ".join(f"--{m}" for m in missing))
    router = specs.get("router")
    if "router" in policy.needs and router and not is_url(router) and not opts.return_hidden:
        from .router_training.probe import probe_needs_hidden

        if probe_needs_hidden(router):  # a probe trained on the draft's last hidden state reads it at run time
            opts = dataclasses.replace(opts, return_hidden=True)
    models = Models()
    for role in ("draft", "target"):
        if role in policy.needs:
            setattr(models, role, make_generator(specs[role], role, opts))
    if "prm" in policy.needs:
        models.prm = make_prm(specs["prm"], opts)
    if "router" in policy.needs:
        models.router = make_router(specs["router"], opts)
    return models
