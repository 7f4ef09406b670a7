"""Finding models and tokenizers: a local directory or a Hugging Face id, offline-aware. Used by the in-process
backend and by the server backends (which tokenize on this side), so both behave the same offline."""

from __future__ import annotations

import os
import re

from ..errors import ModelLoadError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(path_or_id: str) -> None:
    """Fail early, with one clear line, on a model that is neither a local directory nor a hub id."""
    if os.path.isdir(os.path.expanduser(path_or_id)):
        return
    if path_or_id.startswith((".", "/", "~")) or not _HUB_ID.match(path_or_id):
        raise ModelLoadError(
            f"model path {path_or_id!r} does not exist (give a local directory or a Hugging Face "
            f"id such as Qwen/Qwen2.5-Math-1.5B-Instruct)"
        )


def _load_failure(what: str, path_or_id: str, exc: Exception) -> ModelLoadError:
    where = (
        "local directory"
        if os.path.isdir(os.path.expanduser(path_or_id))
        else "Hugging Face id (not a local directory; the hub may be unreachable or have no such model)"
    )
    text = " ".join(str(exc).split()) or type(exc).__name__  # the whole message on one line, however it wraps
    text = text if len(text) <= 400 else text[:400] + " ..."
    return ModelLoadError(f"cannot load {what} from {path_or_id!r} as a {where}: {text}")


_hub_reachable: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) answers a TCP connection within `timeout` (asked once)."""
    global _hub_reachable
    if _hub_reachable is None:
        import socket
        import threading
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
        ok = []

        def probe():
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                ok.append(True)
            except OSError:
                pass

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout + 0.5)  # name resolution has no timeout of its own
        _hub_reachable = bool(ok)
    return _hub_reachable


def hub_options(path_or_id: str) -> dict:
    """Extra from_pretrained options for a hub id: none when online; `local_files_only` when the hub cannot be
    reached and the model is in the local cache; and a clear error at once (instead of a minute of retries)
    when it is in neither."""
    if os.path.isdir(os.path.expanduser(path_or_id)):
        return {}
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        return {"local_files_only": True}
    if hub_reachable():
        return {}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(path_or_id, "config.json"), str)
    except Exception:  # an id the cache cannot even parse: the load below reports it
        cached = False
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(
        f"{path_or_id!r} is not a local directory, the Hugging Face hub cannot be reached from "
        f"this machine, and the model is not in the local cache: download it where there is "
        f"network and pass its directory (or set HF_HUB_OFFLINE=1 to use only cached models)"
    )


def load_tokenizer(path_or_id: str):
    from transformers import AutoTokenizer

    check_model_source(path_or_id)
    extra = hub_options(path_or_id)
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(path_or_id), **extra)
    except Exception as exc:  # transformers raises many kinds; the user needs the id and the cause
        raise _load_failure("a tokenizer", path_or_id, exc) from exc
    return tok
