"""The command-line arguments `run`, `sweep`, `serve` and `calibrate` share, and the run configuration built from
them. The policies' own options and the model loaders' settings come from their declarations in the registry
(options.py), so a plugin's policy or backend gets its flags without touching this module."""

from __future__ import annotations

import argparse
import math
import os

from .engine import EngineConfig
from .errors import ConfigError
from .factory import ModelOptions
from .run import RunConfig

ENGINE_DEFAULTS = EngineConfig()
MODEL_DEFAULTS = ModelOptions()


def auto_threads(cpu_count: int | None = None) -> int:
    """torch CPU threads for in-process models when --threads is not given. On small machines (<= 4 cores) one
    thread: decoding tiny or small models is a chain of small kernels, and torch's default of a thread per core
    made `arbitrage run` 2.5-4.5x slower on 2 cores (the threads wait on each other, and the grader and HTTP
    threads need a core); on larger machines half the cores."""
    n = cpu_count or os.cpu_count() or 1
    return 1 if n <= 4 else n // 2


def _threshold_help() -> str:
    from .registry import registry

    return (
        "tau: "
        + ", ".join(f"{name} in [{lo:g}, {hi:g}]" for name, (lo, hi) in registry().thresholded().items())
        + " (default: the policy's own)"
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (local directory, Hugging Face id, or http://HOST:PORT/v1 of a server)")
    g.add_argument("--draft", help="draft model")
    g.add_argument("--target", help="target model")
    g.add_argument(
        "--prm",
        help="process reward model; judge:URL (a served LM asked whether each step is correct); "
        "testbed-checker[:FLIP[:SIGMA]] for the testbed",
    )
    g.add_argument("--router", help="router directory (`arbitrage router train` writes one: classifier or probe)")
    g.add_argument(
        "--prm-kind",
        default="auto",
        choices=["auto", "value-head", "token-cls"],
        help="PRM layout: Skywork-style value head or 2-label token classification (default: detect)",
    )
    g.add_argument(
        "--prm-format",
        default="skywork",
        choices=["skywork", "separator"],
        help="how steps are laid out for the PRM (default: skywork: problem + newline, each step + newline)",
    )
    g.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="model name on a server for ROLE (draft, target, prm, router); default: the server's first",
    )
    g.add_argument("--prm-tokenizer", help="tokenizer (path or id) for a served PRM (default: ask the server)")
    g.add_argument("--router-tokenizer", help="tokenizer (path or id) for a served router (default: ask the server)")
    g.add_argument(
        "--server-api",
        default="completions",
        choices=["completions", "llamacpp"],
        help="generation API of draft/target servers: OpenAI /v1/completions (vLLM, SGLang, llama.cpp) "
        "or llama.cpp's native /completion",
    )
    g.add_argument(
        "--pooling-route",
        default="pooling",
        choices=["pooling", "embeddings"],
        help="how served PRM/router are read: vLLM POST /pooling, or /v1/embeddings (paper's plugins)",
    )
    g.add_argument(
        "--server-concurrency",
        type=int,
        default=MODEL_DEFAULTS.server_concurrency,
        help="requests in flight per server (default: %(default)s)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    g.add_argument(
        "--threads",
        type=int,
        help=f"torch CPU threads for in-process models (default: chosen from this machine: 1 on machines "
        f"with at most 4 cores, else half the cores; here {auto_threads()})",
    )
    g.add_argument(
        "--draft-hidden-states",
        action="store_true",
        help="record the draft's last hidden state per step (for probe routers trained on it)",
    )
    g.add_argument("--no-cache-reuse", action="store_true", help="recompute every step's prefix (for comparison)")
    g.add_argument(
        "--fast-decode",
        action="store_true",
        help="in-process draft/target: a static KV cache (one slot per problem in flight) and a decoding "
        "step compiled once with torch.compile (CUDA graphs on a GPU); same greedy output",
    )
    g.add_argument(
        "--static-cache-len",
        type=int,
        default=MODEL_DEFAULTS.static_len,
        help="with --fast-decode: tokens per problem in the static cache (default: %(default)s)",
    )


def add_policy_option_arguments(p: argparse.ArgumentParser) -> None:
    """A flag for every option a registered policy declares (e.g. --decide-after for the router)."""
    from .registry import registry

    g = p.add_argument_group("policy options (each policy's own)")
    for opt, owners in registry().policy_options().values():
        opt.add_to(g, who=", ".join(owners))


def add_loader_option_arguments(p: argparse.ArgumentParser) -> None:
    """A flag for every setting a registered model loader declares (plugin backends)."""
    from .registry import registry

    declared = registry().loader_options()
    if declared:
        g = p.add_argument_group("model loader settings (declared by the loaders)")
        for opt, owners in declared.values():
            opt.add_to(g, who=", ".join(owners))


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    sep = ENGINE_DEFAULTS.separator.encode("unicode_escape").decode()
    g.add_argument("--separator", default=sep, help=f"step separator, with escapes (default: {sep})")
    g.add_argument("--temperature", type=float, default=MODEL_DEFAULTS.temperature, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=MODEL_DEFAULTS.top_p)
    g.add_argument("--seed", type=int, default=MODEL_DEFAULTS.seed)
    g.add_argument("--max-steps", type=int, default=ENGINE_DEFAULTS.max_steps, help="(default: %(default)s)")
    g.add_argument(
        "--max-step-tokens", type=int, default=ENGINE_DEFAULTS.max_step_tokens, help="(default: %(default)s)"
    )
    g.add_argument(
        "--max-total-tokens", type=int, default=ENGINE_DEFAULTS.max_total_tokens, help="(default: %(default)s)"
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=ENGINE_DEFAULTS.concurrency,
        help="problems in flight at once (1 = the paper's batch size 1; default: %(default)s)",
    )
    g.add_argument(
        "--serial-models",
        action="store_true",
        help="one model call at a time (the engine before models worked in parallel; for comparison)",
    )
    g = p.add_argument_group("reusing the draft's work in target-written steps (lossless; on by default)")
    g.add_argument(
        "--no-speculation",
        action="store_true",
        help="the target writes escalated steps from scratch: no verification of the draft's proposal and "
        "no draft tokens inside its steps (for comparison)",
    )
    g.add_argument(
        "--gamma",
        type=int,
        default=ENGINE_DEFAULTS.gamma,
        help="draft tokens proposed at a time inside a target-written step, verified in one target pass "
        "(in-process draft and target of one vocabulary; 0: verify the draft's proposal only; "
        "default: %(default)s)",
    )


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (pip install 'arbitrage[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run shards of the problems as Ray tasks on the cluster at ADDRESS ('auto': the one this "
        "machine joined; no ADDRESS: a local one), joined into --out afterwards; a task whose worker "
        "dies is retried and resumes its shard",
    )
    g.add_argument(
        "--ray-tasks", type=int, help="shards (default: the cluster's CPUs, or GPUs with --ray-gpus-per-task)"
    )
    g.add_argument("--ray-gpus-per-task", type=float, default=0.0, help="GPUs each task reserves (default: 0)")
    g.add_argument("--ray-cpus-per-task", type=float, default=1.0, help="CPUs each task reserves (default: 1)")


def ray_shards(args, out: str) -> list[str]:
    """Run this command's shards on Ray (args.argv) and return their output directories."""
    from .ray_cluster import run_shards

    return run_shards(
        args.argv,
        out,
        address=args.ray,
        tasks=args.ray_tasks,
        gpus_per_task=args.ray_gpus_per_task,
        cpus_per_task=args.ray_cpus_per_task,
        progress=not getattr(args, "quiet", False),
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        help="math500 | olympiadbench | gsm8k | aime24 | svamp | asdiv | mawps | college_math | PATH.jsonl | "
        "hf:org/name[:split] | testbed:SPLIT[:N[:SEED]] (the synthetic task)",
    )
    g.add_argument("--limit", type=int, help="first N problems")
    g.add_argument("--offset", type=int, default=0, help="skip the first N problems")
    g.add_argument(
        "--shard",
        metavar="K/N",
        help="run only shard K of N (0 <= K < N; problems assigned by a hash of their id, so shards stay "
        "fixed when the data grows): N machines each run one into their own --out",
    )
    g.add_argument(
        "--template",
        help="qwen-math-cot | chat (the tokenizer's chat template) | plain | a string with {question} | "
        "@FILE (default: a data file's own `prompt` field when it has one, else qwen-math-cot)",
    )
    g.add_argument("--question-field")
    g.add_argument("--answer-field")
    g.add_argument("--id-field")


def _unescape(s: str) -> str:
    return s.encode("utf-8").decode("unicode_escape")


def config_from_args(args, policy: str | None = None, threshold: float | None = None, out: str | None = None):
    for name in ("max_steps", "max_step_tokens", "max_total_tokens", "concurrency", "server_concurrency"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    served = {}
    for item in args.served_model_name:
        role, sep, name = item.partition("=")
        if not sep or role not in ("draft", "target", "prm", "router"):
            raise ConfigError(f"--served-model-name {item!r}: expected ROLE=NAME with ROLE draft|target|prm|router")
        served[role] = name
    for role in ("prm", "router"):
        if getattr(args, f"{role}_tokenizer", None):
            served[f"{role}_tokenizer"] = getattr(args, f"{role}_tokenizer")
    separator = _unescape(args.separator)
    if not separator:
        raise ConfigError("--separator must not be empty")
    thr = args.threshold if threshold is None else threshold
    if getattr(args, "calibration", None):  # the policy and threshold `arbitrage calibrate` chose
        from .calibrate import chosen_from_file

        policy, thr = chosen_from_file(
            args.calibration,
            policy or args.policy,
            thr,
            {"draft": args.draft, "target": args.target, "prm": args.prm, "router": args.router},
        )
    if not (policy or args.policy):
        raise ConfigError("give --policy (or --calibration FILE from `arbitrage calibrate`)")
    if thr is not None and not math.isfinite(thr):
        raise ConfigError("--threshold must be a finite number")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    if args.shard:
        from .shards import parse_shard

        parse_shard(args.shard)
    if args.gamma < 0:
        raise ConfigError("--gamma must be >= 0")
    from .registry import registry

    policy_options = {
        name: opt.check(getattr(args, name))
        for name, (opt, _) in registry().policy_options().items()
        if getattr(args, name, None) is not None
    }
    extra = {
        name: opt.check(getattr(args, name))
        for name, (opt, _) in registry().loader_options().items()
        if getattr(args, name, None) is not None
    }
    return RunConfig(
        policy=policy or args.policy,
        threshold=thr,
        policy_options=policy_options,
        out=out or args.out,
        data=args.data,
        models={"draft": args.draft, "target": args.target, "prm": args.prm, "router": args.router},
        limit=args.limit,
        offset=args.offset,
        shard=args.shard,
        template=args.template,
        question_field=args.question_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
        engine=EngineConfig(
            max_steps=args.max_steps,
            max_step_tokens=args.max_step_tokens,
            max_total_tokens=args.max_total_tokens,
            concurrency=args.concurrency,
            separator=separator,
            parallel=not args.serial_models,
            verify=not args.no_speculation,
            gamma=args.gamma,
        ),
        model_options=ModelOptions(
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads if args.threads is not None else auto_threads(),
            reuse_cache=not args.no_cache_reuse,
            prm_kind=args.prm_kind,
            prm_format=args.prm_format,
            served_names=served or None,
            server_api=args.server_api,
            pooling_route=args.pooling_route,
            server_concurrency=args.server_concurrency,
            return_hidden=getattr(args, "draft_hidden_states", False),
            fast_decode=args.fast_decode,
            static_slots=args.concurrency,
            static_len=args.static_cache_len,
            extra=extra or None,
        ),
        progress=not getattr(args, "quiet", False),
    )


def quiet_libraries(quiet: bool) -> None:
    """With --quiet: no transformers progress bars ("Loading weights") or info messages inside ours."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
