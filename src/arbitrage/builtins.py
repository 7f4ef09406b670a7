"""The core's own plugin: model loaders for local directories, hub ids and servers, the core data sources,
the step policies, and the `run`, `sweep` and `serve` commands. It registers exactly as an outside plugin would
(the `core` entry point of the `arbitrage.plugins` group), so it is also the example to copy."""

from __future__ import annotations

from .factory import ModelOptions, is_url

LOWEST = -100  # the generic loaders: anything the others do not claim is a local directory or a hub id


def _generator(spec: str, role: str, opts: ModelOptions, separator: str):
    if is_url(spec):
        from .backends.openai_compat import OpenAICompletionsGenerator

        return OpenAICompletionsGenerator(
            spec,
            model=(opts.served_names or {}).get(role),
            name=role,
            separator=separator,
            temperature=opts.temperature,
            top_p=opts.top_p,
            seed=opts.seed,
            concurrency=opts.server_concurrency,
            api=opts.server_api,
        )
    from .backends.hf import HFGenerator

    return HFGenerator.from_pretrained(
        spec,
        name=role,
        separator=separator,
        temperature=opts.temperature,
        top_p=opts.top_p,
        seed=opts.seed,
        device=opts.device,
        dtype=opts.dtype,
        reuse_cache=opts.reuse_cache,
        return_hidden=opts.return_hidden and role == "draft",
        static_slots=opts.static_slots if opts.fast_decode else 0,
        static_len=opts.static_len,
        compile=opts.fast_decode,
    )


def _judge_prm(spec: str, role: str, opts: ModelOptions, separator: str):
    from .backends.judge_prm import JudgePRM

    return JudgePRM(
        spec.split(":", 1)[1],
        model=(opts.served_names or {}).get("prm"),
        separator=separator,
        api=opts.server_api,
        concurrency=opts.server_concurrency,
    )


def _prm(spec: str, role: str, opts: ModelOptions, separator: str):
    if is_url(spec):
        from .backends.pooling import PoolingPRM

        names = opts.served_names or {}
        # A value-head PRM (Skywork layout) is served through the embeddings route by the paper's plugins.
        route = "embeddings" if opts.prm_kind == "value-head" else opts.pooling_route
        return PoolingPRM(
            spec,
            model=names.get("prm"),
            tokenizer=names.get("prm_tokenizer"),
            fmt=opts.prm_format,
            separator=separator,
            route=route,
            concurrency=opts.server_concurrency,
        )
    from .scoring.hf import HFPRM

    return HFPRM.from_pretrained(
        spec,
        kind=opts.prm_kind,
        fmt=opts.prm_format,
        device=opts.device,
        dtype=opts.dtype,
        reuse_cache=opts.reuse_cache,
    )


def _router(spec: str, role: str, opts: ModelOptions, separator: str):
    if is_url(spec):
        from .backends.pooling import PoolingRouter

        names = opts.served_names or {}
        # separator and author tags come from the router's own arbitrage_router.json, not from the run
        return PoolingRouter(
            spec,
            model=names.get("router"),
            tokenizer=names.get("router_tokenizer"),
            route=opts.pooling_route,
            concurrency=opts.server_concurrency,
        )
    from .scoring.hf import HFRouter

    return HFRouter.from_pretrained(spec, device=opts.device, dtype=opts.dtype, reuse_cache=opts.reuse_cache)


def _replicas(kind: str):
    """A loader for `URL1,URL2,...`: each replica loaded as one server, behind one `Replicas`."""
    load_one = {"generator": _generator, "prm": _prm, "router": _router}[kind]

    def load(spec: str, role: str, opts: ModelOptions, separator: str):
        from .backends.replicas import Replicas, split_urls

        urls = split_urls(spec)
        assert urls is not None  # this loader matches replica specs only
        return Replicas([load_one(url, role, opts, separator) for url in urls])

    return load


def _is_replicas(spec: str) -> bool:
    from .backends.replicas import split_urls

    return split_urls(spec) is not None


def _data(spec: str, **options):
    from .data import load_records

    return load_records(spec, **options)


def register(registry) -> None:
    for kind in ("generator", "prm", "router"):
        registry.add_loader(
            kind,
            "several servers",
            _is_replicas,
            _replicas(kind),
            priority=15,
            help="URL1,URL2,...: replicas of one model, each problem kept on one of them",
        )
    registry.add_loader(
        "generator",
        "server URL",
        is_url,
        _generator,
        priority=10,
        help="http://HOST:PORT/v1 of an OpenAI-compatible server (vLLM, SGLang, llama.cpp)",
    )
    registry.add_loader(
        "generator",
        "local directory or hub id",
        lambda s: True,
        _generator,
        priority=LOWEST,
        help="a transformers causal LM",
    )
    registry.add_loader(
        "prm",
        "judge PRM",
        lambda s: s.startswith("judge:"),
        _judge_prm,
        priority=20,
        help="judge:URL: a served LM asked whether each step is correct",
    )
    registry.add_loader("prm", "served PRM", is_url, _prm, priority=10, help="a PRM on vLLM's pooling runner")
    registry.add_loader(
        "prm",
        "local directory or hub id",
        lambda s: True,
        _prm,
        priority=LOWEST,
        help="value-head (Skywork layout) or 2-label token-classification PRM",
    )
    registry.add_loader(
        "router", "served router", is_url, _router, priority=10, help="a router on vLLM's pooling runner"
    )
    registry.add_loader(
        "router",
        "classifier router",
        lambda s: True,
        _router,
        priority=LOWEST,
        help="a token-classification router written by `arbitrage router train`",
    )
    registry.add_loader("data", "built-in sets, JSON-lines files, hf:org/name", lambda s: True, _data, priority=LOWEST)

    from .policies import BUILTIN_POLICIES

    for cls in BUILTIN_POLICIES:
        registry.add_policy(cls)

    from . import calibrate_cli, run_cli, serve_cli, sweep_cli, view

    registry.add_command("run", run_cli.register)
    registry.add_command("sweep", sweep_cli.register)
    registry.add_command("serve", serve_cli.register)
    registry.add_command("calibrate", calibrate_cli.register)
    registry.add_command("view", view.register)
