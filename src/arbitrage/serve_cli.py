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


def cmd_serve(args) -> int:
    import uvicorn

    from .factory import build_models
    from .models import ROLES
    from .policies import make_policy
    from .server.app import create_app
    from .server.service import Service

    quiet_libraries(True)
    if args.policy is None and not args.calibration:
        args.policy = "router"
    cfg = config_from_args(args, out="-")  # applies --calibration
    if args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1")
    cfg.engine.concurrency = args.max_concurrency
    policy = make_policy(cfg.policy, cfg.threshold, **cfg.policy_options)
    roles = {r for r, spec in cfg.models.items() if spec} | set(policy.needs)
    models = build_models(roles, cfg.models, cfg.model_options, cfg.engine.separator, optional=ROLES)
    models.check(policy)
    tokenizer = _tokenizer(args, models)
    if args.shutdown_timeout < 0:
        raise ConfigError("--shutdown-timeout must be >= 0 seconds")
    service = Service(
        models,
        policy,
        cfg.engine,
        served_name=args.served_name,
        tokenizer=tokenizer,
        policy_options=cfg.policy_options,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    print(
        f"arbitrage serve: {args.served_name!r}, default policy {policy.describe()}, up to "
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
