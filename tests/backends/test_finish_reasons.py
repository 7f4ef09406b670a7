"""The stop normaliser on the response shapes each server documents (no server needed)."""

import pytest

from arbitrage.backends.openai_compat import normalize_finish

SEP = "\n\n"

# vLLM /v1/completions choice: finish_reason + stop_reason (the matched stop string, a stop token id, or null).
VLLM = [
    (
        {"index": 0, "text": "x = 3", "logprobs": None, "finish_reason": "stop", "stop_reason": "\n\n"},
        ("x = 3", "separator"),
    ),
    (
        {"index": 0, "text": "The answer is 7.", "finish_reason": "stop", "stop_reason": None},
        ("The answer is 7.", "eos"),
    ),
    ({"index": 0, "text": "Done", "finish_reason": "stop", "stop_reason": 151645}, ("Done", "eos")),  # stop token id
    ({"index": 0, "text": "x = 3 + 4 = ", "finish_reason": "length", "stop_reason": None}, ("x = 3 + 4 = ", "length")),
    ({"index": 0, "text": "", "finish_reason": "stop", "stop_reason": "\n\n"}, ("", "separator")),
]

# SGLang /v1/completions choice: finish_reason + matched_stop (the stop string, or the token id that ended it).
SGLANG = [
    (
        {"index": 0, "text": "x = 3", "logprobs": None, "finish_reason": "stop", "matched_stop": "\n\n"},
        ("x = 3", "separator"),
    ),
    ({"index": 0, "text": "So 7.", "finish_reason": "stop", "matched_stop": 151643}, ("So 7.", "eos")),
    ({"index": 0, "text": "x = ", "finish_reason": "length", "matched_stop": None}, ("x = ", "length")),
]

# SGLang native /generate body: meta_info.finish_reason = {"type": "stop"|"length", "matched": ...}.
SGLANG_NATIVE = [
    (
        {"text": "x = 3", "meta_info": {"finish_reason": {"type": "stop", "matched": "\n\n"}, "completion_tokens": 4}},
        ("x = 3", "separator"),
    ),
    ({"text": "7", "meta_info": {"finish_reason": {"type": "stop", "matched": 151643}}}, ("7", "eos")),
    ({"text": "x", "meta_info": {"finish_reason": {"type": "length", "length": 16}}}, ("x", "length")),
]

# llama.cpp server /completion body: stop_type "eos" | "word" | "limit", stopping_word; and the older flags.
LLAMACPP = [
    (
        {"content": "x = 3", "stop": True, "stop_type": "word", "stopping_word": "\n\n", "tokens_predicted": 4},
        ("x = 3", "separator"),
    ),
    ({"content": "7", "stop": True, "stop_type": "eos", "stopping_word": ""}, ("7", "eos")),
    ({"content": "x = 3 +", "stop": True, "stop_type": "limit", "stopping_word": ""}, ("x = 3 +", "length")),
    (
        {"content": "x", "stopped_eos": False, "stopped_word": True, "stopped_limit": False, "stopping_word": "\n\n"},
        ("x", "separator"),
    ),
    (
        {"content": "x", "stopped_eos": True, "stopped_word": False, "stopped_limit": False, "stopping_word": ""},
        ("x", "eos"),
    ),
    (
        {"content": "x", "stopped_eos": False, "stopped_word": False, "stopped_limit": True, "stopping_word": ""},
        ("x", "length"),
    ),
]


@pytest.mark.parametrize("resp,expected", VLLM + SGLANG + SGLANG_NATIVE + LLAMACPP)
def test_documented_shapes(resp, expected):
    assert normalize_finish(resp, SEP) == expected


def test_text_that_kept_the_separator_is_cut_there():
    # e.g. vLLM with include_stop_str_in_output, SGLang with no_stop_trim, or a stop string inside a token
    resp = {"text": "x = 3\n\nnext", "finish_reason": "length", "stop_reason": None}
    assert normalize_finish(resp, SEP) == ("x = 3", "separator")
    resp = {"text": "x = 3\n\n", "finish_reason": "stop", "stop_reason": "\n\n"}
    assert normalize_finish(resp, SEP) == ("x = 3", "separator")


def test_other_separators():
    resp = {"text": "a", "finish_reason": "stop", "stop_reason": "<step>"}
    assert normalize_finish(resp, "<step>") == ("a", "separator")
    resp = {"text": "a\n\nb", "finish_reason": "stop", "stop_reason": None}
    assert normalize_finish(resp, "<step>") == ("a\n\nb", "eos")


def test_server_without_stop_details_assumes_separator(caplog):
    # llama.cpp's and OpenAI's /v1/completions say only "stop": the separator is the likelier reason
    resp = {"text": "x = 3", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert normalize_finish(resp, SEP) == ("x = 3", "separator")


@pytest.mark.parametrize(
    "resp",
    [
        {"text": "", "finish_reason": "abort"},
        {"text": "", "finish_reason": None},
        {"text": "", "meta_info": {"finish_reason": {"type": "abort", "message": "oom"}}},
        {"content": "", "stop_type": "weird"},
    ],
)
def test_aborted_or_unknown_finish_raises(resp):
    with pytest.raises(ValueError):
        normalize_finish(resp, SEP)
