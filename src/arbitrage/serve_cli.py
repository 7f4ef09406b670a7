"""`arbitrage serve`: an OpenAI-compatible speculative-reasoning server."""

from __future__ import annotations

import argparse

from .cli_args import (
    add_decoding_arguments,
    add_loader_option_arguments,
    add_model_arguments,
    add_policy_option_arguments,
    config_from_args,
    quiet_libraries,
)
from .errors import ConfigError

EPILOG = """\
example (the testbed's shipped models, in-process):
  arbitrage serve --policy rsd --threshold 0.5 --draft testbed:draft --target testbed:target \\
      --prm testbed-checker:0.1:0.1 --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"model": "arbitrage", "prompt": "Let a = 12. b = a + 7. c = b - 4. What is c?\\n\\n", "max_tokens": 64}'

Per request (extra JSON fields, e.g. the openai client's extra_body): policy, threshold, max_steps,
each policy's own options (decide_after, ...). Every model given is loaded, so a request may pick any
policy those models allow.
"""


def build_service(args):
    """The service `serve` runs (models loaded, policy checked): built once here, or on every Ray Serve replica."""
    from .factory import build_models
    from .models import ROLES
    from .policies import make_policy
    from .server.service import Service

    quiet_libraries(True)
    if args.policy is None and not args.calibration:
        args.policy = "router"
    cfg = config_from_args(args, out="-")  # applies --calibration
    if args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1")
    if args.shutdown_timeout < 0:
        raise ConfigError("--shutdown-timeout must be >= 0 seconds")
    cfg.engine.concurrency = args.max_concurrency
    policy = make_policy(cfg.policy, cfg.threshold, **cfg.policy_options)
    roles = {r for r, spec in cfg.models.items() if spec} | set(policy.needs)
    models = build_models(roles, cfg.models, cfg.model_options, cfg.engine.separator, optional=ROLES)
    models.check(policy)
    return Service(
        models,
        policy,
        cfg.engine,
        served_name=args.served_name,
        tokenizer=_tokenizer(args, models),
        policy_options=cfg.policy_options,
        max_prompt_tokens=args.max_prompt_tokens,
    )


def cmd_serve(args) -> int:
    import uvicorn

    from .server.app import create_app

    if args.ray_serve:
        return _serve_on_ray(args)
    service = build_service(args)
    print(
        f"arbitrage serve: {args.served_name!r}, default policy {service.default_policy.describe()}, up to "
        f"{args.max_concurrency} problems in flight, prompts up to {service.max_prompt_tokens} tokens, on "
        f"http://{args.host}:{args.port}/v1",
        flush=True,
    )
    # On SIGTERM/SIGINT uvicorn stops taking requests, waits up to --shutdown-timeout for those in flight, then
    # cancels the rest (each cancelled request frees its problem in the engine).
    uvicorn.run(
        create_app(service),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    return 0


def app_builder(args):
    """What each Ray Serve replica calls: its own models and engine, the same app."""

    def build():
        from .server.app import create_app

        service = build_service(args)
        service.start()  # the replica's engine runs from the start (the app's lifespan would start it too)
        return create_app(service)

    return build


def _serve_on_ray(args) -> int:
    from .ray_cluster import deploy, wait_for_interrupt

    autoscale = None
    if args.autoscale:
        lo, _, hi = args.autoscale.partition(":")
        try:
            autoscale = (int(lo), int(hi))
        except ValueError:
            raise ConfigError(f"--autoscale {args.autoscale!r}: expected MIN:MAX replicas, e.g. 1:4") from None
        if not 0 <= autoscale[0] <= autoscale[1] or autoscale[1] < 1:
            raise ConfigError(f"--autoscale {args.autoscale!r}: expected 0 <= MIN <= MAX and MAX >= 1")
    config_from_args(args, out="-")  # fail here on a bad option, before any replica starts
    deploy(
        app_builder(args),
        address=args.ray_serve,
        host=args.host,
        port=args.port,
        num_replicas=args.num_replicas,
        autoscale=autoscale,
        gpus_per_replica=args.ray_gpus_per_replica,
        cpus_per_replica=args.ray_cpus_per_replica,
        name=args.served_name,
    )
    print(
        f"arbitrage serve: Ray Serve deployment {args.served_name!r} on http://{args.host}:{args.port}/v1 "
        f"({'autoscaling ' + args.autoscale if autoscale else str(args.num_replicas or 1) + ' replicas'}); "
        f"Ctrl-C stops it",
        flush=True,
    )
    wait_for_interrupt()
    return 0


def _tokenizer(args, models):
    """The tokenizer that renders chat prompts and counts prompt tokens: --tokenizer, else the in-process
    draft's (or target's)."""
    if args.tokenizer:
        from .backends.hf import load_tokenizer

        return load_tokenizer(args.tokenizer)
    for model in (models.draft, models.target):
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            return tok
    return None


def register(sub) -> None:
    from .registry import registry

    p = sub.add_parser(
        "serve",
        help="serve a policy behind an OpenAI-compatible API (completions, chat, streaming)",
        description="Serve step-level speculative reasoning behind /v1/completions and "
        "/v1/chat/completions (streamed step by step), with /v1/models, /health and "
        "/metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policy",
        choices=list(registry().policies),
        help="the default policy (a request may pick another; default: router, or the one in --calibration)",
    )
    p.add_argument("--threshold", type=float, help="the default policy's tau (default: the policy's own)")
    p.add_argument(
        "--calibration",
        metavar="JSON",
        help="the default policy and threshold from the calibration.json `arbitrage calibrate` wrote (an "
        "explicit --policy or --threshold must agree with it)",
    )
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=64,
        help="problems in flight in the engine; more requests wait their turn (default: %(default)s)",
    )
    p.add_argument("--served-name", default="arbitrage", help="the model name clients ask for (default: %(default)s)")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        help="longest prompt taken, in tokens (default: the in-process models' positions minus one, else "
        "32768); longer ones get a 400, and a prompt's bytes are bounded before it is tokenized",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may finish before they are cancelled (default: %(default)s)",
    )
    p.add_argument("--tokenizer", help="tokenizer with the chat template (default: the in-process draft's)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default: %(default)s)")
    g = p.add_argument_group("Ray Serve (pip install 'arbitrage[ray]')")
    g.add_argument(
        "--ray-serve",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve as a Ray Serve deployment on the cluster at ADDRESS ('auto': the one this machine "
        "joined; no ADDRESS: a local one): each replica loads its own models",
    )
    g.add_argument("--num-replicas", type=int, help="replicas of the deployment (default: 1)")
    g.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas instead")
    g.add_argument("--ray-gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves (default: 0)")
    g.add_argument("--ray-cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves (default: 1)")
    add_model_arguments(p)
    add_loader_option_arguments(p)
    add_policy_option_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(
        func=cmd_serve,
        data="",
        limit=None,
        offset=0,
        shard=None,
        template=None,
        question_field=None,
        answer_field=None,
        id_field=None,
        quiet=True,
    )
