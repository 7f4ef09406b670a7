"""Shared fixtures: tiny random models saved once per session, and one torch thread.

On two shared cores, torch's default of one OpenMP thread per core makes tiny matrix products 10-50x slower
whenever another process is busy (the threads spin waiting for each other); one thread is faster for every
model these tests build.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """draft / target / prm (value head) / prm_cls (token classification) / router, all sharing one tokenizer."""
    from arbitrage.testing import make_causal_lm, make_token_classifier, make_value_head_prm

    root = tmp_path_factory.mktemp("tiny")
    make_causal_lm(str(root / "draft"), hidden=32, layers=2, seed=0, separator_bias=4.0, eos_bias=2.5)
    make_causal_lm(str(root / "target"), hidden=64, layers=2, seed=1, separator_bias=4.0, eos_bias=2.5)
    make_value_head_prm(str(root / "prm"), hidden=32)
    make_token_classifier(str(root / "prm_cls"), hidden=32, seed=4)
    make_token_classifier(str(root / "router"), hidden=32, seed=5, router=True)
    return root


@pytest.fixture(scope="session")
def vllm_servers():
    """vLLM's CPU build serving the tiny models (a generation server and a pooling one), started once per session
    on 127.0.0.1 and stopped at its end (tests/vllm_server.py)."""
    from vllm_server import shared_servers, stop_servers

    yield shared_servers()
    stop_servers()
