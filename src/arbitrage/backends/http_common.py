"""Plumbing shared by the server backends: one background event loop, bounded concurrency, retries.

The engine calls backends synchronously from its own thread, so every HTTP client runs its requests on a
single persistent event loop in a daemon thread and the synchronous methods block on the result. Each client
bounds its own in-flight requests (a semaphore, plus the same cap on httpx's connection pool) and retries
connection errors, timeouts, HTTP 429 and 5xx with exponential backoff; anything else, or a server that stays
down past the retry budget, raises `BackendError` naming the URL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx

from ..errors import BackendError
from .hub import load_tokenizer  # noqa: F401  (the one loader; server backends import it from here)

log = logging.getLogger(__name__)
T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process-wide loop that runs all server requests (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="arbitrage-http", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the background loop and wait for it (from any thread but the loop's own)."""
    loop = event_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("run_sync called from the HTTP loop itself; await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def server_root(base_url: str) -> str:
    """'http://h:p', 'http://h:p/' and 'http://h:p/v1' all name the same server root 'http://h:p'."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    if url.endswith("/v1"):
        url = url[:-3]
    return url


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Unreachable(BackendError):
    """The server did not answer (connection refused, timeouts, 5xx) within the retry budget."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class HttpClient:
    """JSON over HTTP to one server, with a concurrency cap and retries. `kind` names the server in errors
    (e.g. "draft server"); paths are relative to the server root."""

    def __init__(
        self,
        base_url: str,
        *,
        kind: str = "server",
        concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.root, self.kind = server_root(base_url), kind
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport, self._sleep = transport, sleep
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self.in_flight = 0  # requests being sent now (for tests and diagnostics)
        self.max_in_flight = 0
        self.n_retries = 0

    def url(self, path: str) -> str:
        return self.root + path

    def _ensure(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Created lazily, inside the loop that will use them.
        if self._client is None:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=limits,
                headers=self.headers,
                transport=self._transport,
            )
            self._sem = asyncio.Semaphore(self.concurrency)
        assert self._sem is not None  # created with the client
        return self._client, self._sem

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2**attempt))

    async def request(self, method: str, path: str, payload: Any = None, *, retries: int | None = None) -> Any:
        """Send one request and return the decoded JSON body; retry transient failures with backoff."""
        url = self.url(path)
        budget = self.max_retries if retries is None else retries
        resp, last = await self._send(method, url, payload, budget)
        if resp is None:
            raise Unreachable(
                f"{self.kind} at {url} kept failing after {budget + 1} attempts (last: {last}); "
                f"is the server still running?",
                last,
            )
        if resp.status_code >= 400:
            raise BackendError(
                f"{self.kind} at {url} refused the request: HTTP {resp.status_code}: {_body_excerpt(resp)}"
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise BackendError(
                f"{self.kind} at {url} answered something that is not JSON: {_body_excerpt(resp)}"
            ) from exc

    async def _send(self, method: str, url: str, payload: Any, budget: int) -> tuple[httpx.Response | None, str]:
        """The first answer that is not transient (None and the last reason when the budget runs out)."""
        client, sem = self._ensure()
        last = ""
        for attempt in range(budget + 1):
            if attempt:
                self.n_retries += 1
                await self._sleep(self.delay(attempt - 1))
            async with sem:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    resp = await client.request(method, url, json=payload)
                except httpx.TimeoutException as exc:
                    last = f"timed out after {self.timeout:g} s ({type(exc).__name__})"
                    continue
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    continue
                finally:
                    self.in_flight -= 1
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_body_excerpt(resp)}"
                log.warning("%s %s answered %s; retrying", self.kind, url, last)
                continue
            return resp, ""
        return None, last

    async def post(self, path: str, payload: Any) -> Any:
        return await self.request("POST", path, payload)

    def post_many(self, path: str, payloads: Sequence[Any]) -> list[Any]:
        """POST every payload concurrently (at most `concurrency` at a time); results in order."""

        async def go():
            return await asyncio.gather(*(self.post(path, p) for p in payloads))

        return list(run_sync(go())) if payloads else []

    def gather(self, coros: Sequence[Awaitable[T]]) -> list[T]:
        async def go():
            return await asyncio.gather(*coros)

        return list(run_sync(go())) if coros else []

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether the server answers a health or model-listing request within `timeout` (no retries: for
        /health checks)."""
        import httpx

        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(self.root + path, timeout=timeout).status_code < 500:
                    return True
            except httpx.HTTPError:
                continue
        return False

    def health(self) -> str:
        return "up" if self.answers() else "down"

    def probe(self, paths: Sequence[str] = ("/v1/models", "/health"), retries: int = 2) -> Any:
        """Check at start that the server answers: the first path that answers 2xx wins. A clear error naming
        the URL when none does."""

        async def go():
            reasons = []
            for path in paths:
                resp, last = await self._send("GET", self.url(path), None, retries)
                if resp is None:  # nothing answers at all: no use trying other paths
                    raise Unreachable(
                        f"cannot reach {self.kind} at {self.root} ({last}). Start the server "
                        f"(see the docs' serving page) or fix the URL.",
                        last,
                    )
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        return {}
                reasons.append(f"GET {path}: HTTP {resp.status_code}")
            raise BackendError(
                f"{self.kind} at {self.root} answers, but not like an OpenAI-compatible server ({'; '.join(reasons)})"
            )

        return run_sync(go())

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                run_sync(client.aclose())
            except Exception:  # closing at interpreter exit must never raise
                pass


def _body_excerpt(resp: httpx.Response, limit: int = 300) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict):
            err = data.get("error", data.get("message", data.get("detail", data)))
            if isinstance(err, dict):
                err = err.get("message", err)
            text = str(err)
        else:
            text = str(data)
    except ValueError:
        text = resp.text
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
