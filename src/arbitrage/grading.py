"""Answer extraction and grading with math-verify, isolated in a worker process.

math-verify (sympy underneath) can hang on pathological input, and its own timeouts use `signal.alarm`, which
only works on the main thread. So the `Grader` runs math-verify with its timeouts disabled inside one long-lived
worker process (spawn context: the parent may have torch and CUDA loaded) and enforces a hard wall-clock limit
per answer from the parent: a worker that hangs or dies is killed and replaced lazily, and that one answer is
graded wrong with reason "timeout" / "worker crashed". Nothing a prediction contains can hang or kill the run.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .errors import ArbitrageError

log = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or of `\\boxed 5`.

    Returns None when there is none, or when the last one is never closed (a generation cut off mid-answer).
    """
    if not text:
        return None
    last = None
    for cmd in _BOX_COMMANDS:
        for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text):
            if last is None or m.start() > last[0]:
                last = (m.start(), m.end())
    if last is None:
        return None
    i = last[1]
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
            j += 1
        return None
    token = re.match(r"[^\s$]+", text[i:])  # \boxed 5  (one token, as in the MATH reference grader)
    return token.group(0).rstrip(".") if token else None


_ASDIV_UNIT = re.compile(r"^(.*?\S)\s*\(\s*[A-Za-z][A-Za-z .'/-]*\)\s*$")  # "9 (apples)" -> "9"
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _number_str(x: float | int) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _strip_math_delims(s: str) -> str:
    """'$10-4 n$' -> '10-4 n' when the whole string is one math span ('$69$,$84$' stays as it is)."""
    for d in ("$$", "$"):
        if s.startswith(d) and s.endswith(d) and len(s) > 2 * len(d):
            inner = s[len(d) : -len(d)]
            if not _UNESCAPED_DOLLAR.search(inner) and not inner.endswith("\\"):
                return inner.strip()
    return s


def gold_answer(raw: Any, dataset: str | None = None) -> str:
    """Normalise a dataset's gold answer to one LaTeX/plain string.

    GSM8K "... #### 1,234" -> "1234"; olympiadbench ["$2$", "$3$"] -> "2, 3"; asdiv "9 (apples)" -> "9";
    numbers -> "43" (not "43.0"); a string that is one whole "$...$" span loses the dollars.
    """
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, (int, float)):
        return _number_str(raw)
    if isinstance(raw, (list, tuple)):
        return ", ".join(p for p in (gold_answer(x, dataset) for x in raw) if p)
    s = str(raw).strip()
    if dataset == "gsm8k" or "####" in s:
        s = s.split("####")[-1].strip().replace(",", "").replace("$", "").strip()
    if dataset == "asdiv" or (dataset is None and re.match(r"^-?[\d.,/]+\s+\(", s)):
        m = _ASDIV_UNIT.match(s)
        if m:
            s = m.group(1)
    s = _strip_math_delims(s)
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


# --- numbers math-verify misreads, rewritten before it sees them ----------------------------------------------

# 4.5e33, 1e-5, 6.02E+23: math-verify reads "e" as Euler's number (4.5e33 = 4.5 * e * 33).
_E_NOTATION = re.compile(r"(?<![\w.\\^{])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?)(\d+)(?![\w.])")
# 1\,000 and 1\;000 (thin/medium spaces as thousands separators): math-verify reads 1 * 000 = 0.
_SPACED_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\\;|\\:|\\!|\\ |~|\\thinspace\s?)(?=\d{3}(?!\d))")


def normalize_numbers(s: str) -> str:
    """Rewrite numbers the grader would misread: e-notation to a power of ten, thin-space thousands joined."""
    s = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{'-' if m.group(2) == '-' else ''}{int(m.group(3))}}}", s)
    return _SPACED_THOUSANDS.sub("", s)


_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*\\times\s*10\^\{?-?\d+\}?)?"
_WITH_UNIT = re.compile(
    r"^\s*(" + _NUMBER + r")\s*(?:\\(?:text|mathrm|mbox|textrm)\{\s*([^{}]+?)\s*\}"
    r"|([A-Za-z]+(?:\^\{?\d\}?)?))\s*\.?\s*$"
)


def unit_of(answer: str) -> str | None:
    """The unit of an answer written as a number and a unit ("5 m", "5 \\text{ cm}", "3\\,\\mathrm{kg}"), else None."""
    m = _WITH_UNIT.match(answer.replace("\\,", " ").replace("\\ ", " ").replace("~", " "))
    if not m:
        return None
    unit = (m.group(2) or m.group(3) or "").strip().lower().replace(" ", "")
    return unit[:-1] if len(unit) > 2 and unit.endswith("s") else unit  # "meters" ~ "meter"


def units_differ(prediction: str, gold: str) -> tuple[str, str] | None:
    """(unit of the prediction, unit of the gold) when both answers carry a unit and the units differ."""
    pu, gu = unit_of(prediction), unit_of(gold)
    return (pu, gu) if pu and gu and pu != gu else None


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    prediction: str | None  # the extracted answer (boxed content, else math-verify's extraction)
    # "correct" (math-verify), "exact match" (same text), "string match" (same text ignoring case/\\text),
    # "wrong", "no answer", "timeout", "worker crashed", "error: ...".
    reason: str


# ---------------------------------------------------------------- worker side (runs in the child process)


def _latex_gold(gold: str) -> str:
    """math-verify only reads LaTeX inside a math environment: wrap a bare gold in $...$."""
    if _UNESCAPED_DOLLAR.search(gold) or "\\boxed" in gold or "\\(" in gold or "\\[" in gold:
        return gold
    return f"${gold}$"


def _compact(s: str) -> str:
    return _strip_math_delims("".join(s.split()))


def _plain(s: str) -> str:
    """Loose string form for text answers ("\\text{Mrs. Hilt}" vs "Mrs. Hilt")."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("$", "").replace("\\", "")
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _grade_pair(boxed: str | None, text: str, gold: str) -> tuple[bool, str | None, str]:
    """Grade in the worker: (correct, prediction, reason). `boxed` is None when the text had no \\boxed."""
    from math_verify import parse, verify

    gold_parsed = parse(_latex_gold(gold), parsing_timeout=None)
    prediction: str | None
    if boxed is not None:
        prediction = boxed
        pred_parsed = parse("\\boxed{" + boxed + "}", parsing_timeout=None)
    else:
        pred_parsed = parse(text, parsing_timeout=None)
        prediction = pred_parsed[-1] if pred_parsed and isinstance(pred_parsed[-1], str) else None
    if not pred_parsed and not prediction:
        return False, prediction, "no answer"
    if gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True, prediction, "correct"
    # Text answers ("Mrs. Hilt", "Yes") that sympy cannot hold: exact match after light normalisation.
    if prediction is not None and _plain(prediction) and _plain(prediction) == _plain(gold):
        return True, prediction, "string match"
    return False, prediction, "wrong" if gold_parsed else "wrong (gold not parsed)"


def _debug_grade(boxed: str | None, text: str, gold: str) -> tuple[bool, str | None, str]:
    """Test hook: gold "sleep:N" hangs for N seconds, gold "crash" kills the worker; else grades normally."""
    if gold.startswith("sleep:"):
        time.sleep(float(gold[6:]))
    elif gold == "crash":
        import os

        os._exit(3)
    return _grade_pair(boxed, text, gold)


def _worker_main(conn, grade_fn: Callable) -> None:
    try:
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "Timeout is disabled" notes
        logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
        import math_verify  # noqa: F401  (pays the sympy import before the first timed request)

        _grade_pair(None, "$1$", "1")  # warm sympy/antlr caches as well
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        req_id, boxed, text, gold = msg
        try:
            res = grade_fn(boxed, text, gold)
        except Exception as exc:
            res = (False, boxed, f"error: {type(exc).__name__}: {exc}"[:300])
        conn.send((req_id, res))


# ---------------------------------------------------------------- parent side

_START_LOCK = threading.Lock()


def _start_without_main(proc) -> None:
    """Start a spawn-context process without making the child re-import the parent's __main__.

    The worker needs nothing from __main__, and re-running it would import torch (slow), re-run an unguarded
    user script (which then fails to spawn), or load models. A bare stand-in __main__ has neither __file__
    nor __spec__, so multiprocessing does not ask the child to import it.
    """
    main = sys.modules.get("__main__")
    with _START_LOCK:
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class Grader:
    """Grades predictions against golds; one reusable worker process, a hard timeout per answer.

    Use as a context manager or call `close()`. Thread-safe (calls are serialised).
    """

    def __init__(self, timeout: float = 5.0, *, startup_timeout: float = 120.0, _grade_fn: Callable | None = None):
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self._grade_fn = _grade_fn or _grade_pair
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._req = 0
        self.restarts = 0  # workers killed after a timeout or a crash

    # -- worker lifecycle
    def _start(self) -> str | None:
        """Start a worker; returns None when ready, else a reason string."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self._grade_fn), daemon=True, name="arbitrage-grader"
        )
        try:
            _start_without_main(proc)
        except Exception as exc:  # e.g. called from a daemonic process, which may not have children
            parent.close()
            child.close()
            raise ArbitrageError(f"could not start the grading worker process: {exc}") from exc
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(self.startup_timeout):
            self._kill()
            return "worker start timeout"
        try:
            kind, detail = parent.recv()
        except (EOFError, OSError):
            self._kill()
            return "worker crashed at start"
        if kind == "error":
            self._kill()
            raise ArbitrageError(
                f"the grading worker could not load math-verify ({detail}); install it with `pip install math-verify`"
            )
        return None

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)

    def close(self) -> None:
        """Stop the worker (politely, then by force)."""
        with self._lock:
            if self._proc is not None and self._conn is not None:
                try:
                    self._conn.send(None)
                    self._proc.join(2)
                except (OSError, ValueError):
                    pass
            self._kill()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._kill()
        except Exception:
            pass

    # -- grading
    def grade(self, prediction_text: str | None, gold: Any) -> GradeResult:
        """Grade one model output (full text; the last \\boxed{} is the answer) against a gold answer."""
        gold_s = gold_answer(gold)
        text = prediction_text or ""
        boxed = extract_boxed(text)
        if not text.strip() or (boxed is not None and not boxed.strip()):
            return GradeResult(False, boxed or None, "no answer")
        if not gold_s:
            return GradeResult(False, boxed, "empty gold")
        if boxed is not None and _compact(boxed) == _compact(gold_s):
            return GradeResult(True, boxed, "exact match")  # no sympy: identical long answers can hang it
        if boxed is not None:
            differ = units_differ(boxed, gold_s)
            if differ:  # math-verify drops units: "5 m" would equal "5 cm"
                return GradeResult(False, boxed, f"wrong (unit {differ[0]!r}, gold {differ[1]!r})")
        with self._lock:
            result = self._request(
                None if boxed is None else normalize_numbers(boxed), normalize_numbers(text), normalize_numbers(gold_s)
            )
        return GradeResult(result.correct, boxed if boxed is not None else result.prediction, result.reason)

    def grade_many(self, pairs: Iterable[tuple[str | None, Any]]) -> list[GradeResult]:
        """Grade (prediction_text, gold) pairs in order, each under its own timeout."""
        return [self.grade(p, g) for p, g in pairs]

    def _request(self, boxed: str | None, text: str, gold: str) -> GradeResult:
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._kill()
            why = self._start()
            if why is not None:
                log.warning("grader: %s", why)
                return GradeResult(False, boxed, why)
        self._req += 1
        req_id = self._req
        deadline = time.monotonic() + self.timeout
        assert self._conn is not None  # a live worker has its pipe: _start sets both, _kill clears both
        try:
            self._conn.send((req_id, boxed, text, gold))
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._conn.poll(left):
                    log.warning(
                        "grader: answer %r timed out after %.1fs; restarting the worker",
                        (boxed or text)[:80],
                        self.timeout,
                    )
                    self._kill()
                    self.restarts += 1
                    return GradeResult(False, boxed, "timeout")
                got_id, (correct, prediction, reason) = self._conn.recv()
                if got_id == req_id:
                    return GradeResult(bool(correct), prediction, reason)
        except (EOFError, OSError, BrokenPipeError):
            self._kill()
            self.restarts += 1
            return GradeResult(False, boxed, "worker crashed")
