"""Loading math problems (built-in benchmark copies, a user's JSON-lines file, or a hub dataset) as `Problem`s.

Every problem gets its prompt here, from one of the templates in `prompts`, so the generators only ever continue
`Problem.prompt`. Malformed input fails early with a one-line `DataError` naming the file, line and field.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .grading import gold_answer
from .prompts import format_prompt, resolve_template
from .shards import shard_of
from .types import Problem

# Built-in sets. A question spec "A+B" joins fields A and B (the Qwen2.5-Math evaluation does the same for
# SVAMP/ASDiv: body, a full stop if it lacks one, the question). id None: the line number.
BUILTIN: dict[str, dict[str, str | None]] = {
    "math500": {"question": "problem", "answer": "answer", "id": "unique_id"},
    "olympiadbench": {"question": "question", "answer": "final_answer", "id": "id"},
    "gsm8k": {"question": "question", "answer": "answer", "id": "idx"},
    "aime24": {"question": "problem", "answer": "answer", "id": "id"},
    "svamp": {"question": "Body+Question", "answer": "Answer", "id": "ID"},
    "asdiv": {"question": "body+question", "answer": "answer", "id": "idx"},
    "mawps": {"question": "input", "answer": "target", "id": "idx"},
    "college_math": {"question": "question", "answer": "answer", "id": None},
}


@dataclass(frozen=True)
class Origin:
    """Where a built-in set comes from when it is not in $ARBITRAGE_DATA_DIR: shipped with the package (sets
    whose licence allows it), or a Hugging Face hub dataset read with `datasets` (its columns mapped to ours)."""

    licence: str
    source: str
    shipped: bool = False
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, split)
    hub_fields: dict | None = None  # our mapping for the hub copy's columns
    hub_skip: str | None = None  # rows whose answer contains this are left out
    note: str = ""


ORIGINS: dict[str, Origin] = {
    "math500": Origin(
        "MIT (MATH, Hendrycks et al. 2021; the 500-problem subset of OpenAI's PRM800K)",
        "Qwen2.5-Math evaluation data (= HuggingFaceH4/MATH-500)",
        shipped=True,
    ),
    "gsm8k": Origin(
        "MIT (OpenAI, grade-school-math)", "Qwen2.5-Math evaluation data (= openai/gsm8k main test)", shipped=True
    ),
    "svamp": Origin(
        "MIT (Patel et al. 2021)", "Qwen2.5-Math evaluation data (SVAMP train + test, 1000 problems)", shipped=True
    ),
    "aime24": Origin(
        "not openly licensed (MAA competition problems); not shipped",
        "the Hugging Face hub",
        hub=("HuggingFaceH4/aime_2024", None, "train"),
    ),
    "olympiadbench": Origin(
        "no licence stated by the authors; not shipped",
        "the Hugging Face hub",
        hub=("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
        note="the hub copy has 674 problems (Qwen2.5-Math's file: 675)",
    ),
    "asdiv": Origin(
        "CC BY-NC 4.0 (non-commercial use only); not shipped",
        "the Hugging Face hub",
        hub=("EleutherAI/asdiv", "asdiv", "validation"),
        hub_fields={"question": "body+question", "answer": "answer", "id": None},
        hub_skip=";",
        note="rows with several answers (';') are left out, as Qwen2.5-Math does: 2215 problems",
    ),
    "mawps": Origin(
        "no licence stated by the authors; not shipped",
        "a local file only",
        note="no hub copy holds the 2065-problem set of the Qwen2.5-Math evaluation",
    ),
    "college_math": Origin(
        "per problem, some CC BY-NC-SA or GFDL; not shipped",
        "a local file only",
        note="each record carries its own licence in Qwen2.5-Math's evaluation file",
    ),
}
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled_data"


# Hub datasets whose layout matches a built-in one: (built-in name, config).
HUB_ALIASES = {
    "HuggingFaceH4/MATH-500": ("math500", None),
    "openai/gsm8k": ("gsm8k", "main"),
    "gsm8k": ("gsm8k", "main"),
    "HuggingFaceH4/aime_2024": ("aime24", None),
    "Hothan/OlympiadBench": ("olympiadbench", "OE_TO_maths_en_COMP"),
    "EleutherAI/asdiv": ("asdiv", "asdiv"),
}

# Tried in order when a user file or hub dataset does not name its fields.
_QUESTION_GUESSES = ("question", "problem", "Problem", "input", "query", "prompt")
_ANSWER_GUESSES = ("answer", "final_answer", "Answer", "target", "gold", "label")


# ---------------------------------------------------------------- locating files


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for NAME/test.jsonl before a set's own origin: `data_dir` if given, else
    $ARBITRAGE_DATA_DIR if set (a folder of your own copies, e.g. Qwen2.5-Math's evaluation/data)."""
    if data_dir is not None:
        return [Path(data_dir)]
    return [Path(os.environ["ARBITRAGE_DATA_DIR"])] if os.environ.get("ARBITRAGE_DATA_DIR") else []


def builtin_path(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The file a built-in set is read from: your folder's copy, else the shipped one; None when the set comes
    from the hub. A DataError says how to get a set that is in neither."""
    for d in data_dir_candidates(data_dir):
        for p in (d / name / "test.jsonl", d / f"{name}.jsonl", d / name / "test.jsonl.gz"):
            if p.is_file():
                return p
    origin = ORIGINS[name]
    if data_dir is None and origin.shipped:
        return BUNDLED_DIR / f"{name}.jsonl.gz"
    if data_dir is None and origin.hub is not None:
        return None
    looked = (
        f"in {data_dir}"
        if data_dir is not None
        else (
            f"in $ARBITRAGE_DATA_DIR ({os.environ['ARBITRAGE_DATA_DIR']})"
            if os.environ.get("ARBITRAGE_DATA_DIR")
            else "($ARBITRAGE_DATA_DIR is not set)"
        )
    )
    raise DataError(
        f"built-in dataset {name!r} is not shipped with arbitrage (licence: {origin.licence}) and comes "
        f"from {origin.source}; it was not found {looked}: put its JSON-lines file at "
        f"$ARBITRAGE_DATA_DIR/{name}/test.jsonl (e.g. from Qwen2.5-Math's evaluation/data), or pass "
        f"the file itself as --data"
    )


# ---------------------------------------------------------------- reading records


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a file holding one JSON array is accepted too."""
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (built-in names: {', '.join(BUILTIN)})") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = None  # fall through: report line by line
        if isinstance(rows, list):
            for i, rec in enumerate(rows, 1):
                if not isinstance(rec, dict):
                    raise DataError(f"{path}: item {i}: expected a JSON object, got {type(rec).__name__}")
                yield i, rec
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec


def _read_hub(spec: str) -> tuple[str, Iterator[tuple[int, dict]], str | None]:
    """`hf:org/name[:split]` or `hf:org/name:config:split` -> (label, rows, built-in layout name)."""
    parts = spec[3:].split(":")
    name, config, split = parts[0], None, "test"
    if len(parts) == 2:
        split = parts[1] or "test"
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or "test"
    elif len(parts) > 3 or not name:
        raise DataError(f"{spec}: expected hf:org/name[:split] or hf:org/name:config:split")
    layout, alias_config = HUB_ALIASES.get(name, (None, None))
    config = config or alias_config
    rows = _hub_rows(name, config, split, spec, "or download the file and pass its path")
    return spec, rows, layout


def _hub_rows(
    name: str, config: str | None, split: str, label: str, instead: str, skip: tuple[str, str] | None = None
) -> Iterator[tuple[int, dict]]:
    """Rows of a hub dataset through `datasets` (which caches it); `skip` = (field, text): leave out rows whose
    field contains the text (numbering the kept rows)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{label}: loading hub datasets needs the `datasets` library "
            f"(pip install 'arbitrage[hub]') and, the first time, network access to the Hugging Face "
            f"hub; {instead}"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{label}: could not load {name}{':' + config if config else ''} ({split}) from the "
            f"Hugging Face hub: {msg}. It is cached after one load where the hub can be reached; "
            f"{instead}"
        ) from None
    kept = (dict(row) for row in ds)
    if skip is not None:
        kept = (row for row in kept if skip[1] not in str(row.get(skip[0], "")))
    return ((i, row) for i, row in enumerate(kept, 1))


def _pick(rec: dict, guesses: Iterable[str]) -> str | None:
    return next((g for g in guesses if g in rec), None)


def _join_fields(parts: list[str]) -> str:
    out = ""
    for p in (x.strip() for x in parts):
        if not p:
            continue
        if out and out[-1] not in ".?!:;":
            out += "."
        out = f"{out} {p}" if out else p
    return out


def _field(rec: dict, spec: str, what: str, where: str) -> Any:
    names = spec.split("+") if "+" in spec and spec not in rec else [spec]
    missing = [n for n in names if n not in rec]
    if missing:
        have = ", ".join(rec) or "none"
        raise DataError(f"{where}: missing {what} field {missing[0]!r} (fields on this line: {have})")
    values = [rec[n] for n in names]
    for n, v in zip(names, values):
        if v is None:
            raise DataError(f"{where}: {what} field {n!r} is null")
    if len(names) == 1:
        return values[0]
    return _join_fields([str(v) for v in values])


# ---------------------------------------------------------------- public entry

_ID_GUESSES = ("id", "unique_id", "uid", "idx", "problem_id", "ID")


def load_problems(
    source: str | os.PathLike,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    template: str | None = None,
    tokenizer: Any = None,
    data_dir: str | os.PathLike | None = None,
    shard: str | None = None,
) -> list[Problem]:
    """Load problems from any registered data source: a built-in name (see BUILTIN), a JSON-lines path,
    `hf:org/name[:split]`, or a plugin's (the testbed registers `testbed:SPLIT[:N[:SEED]]`), then take the
    `shard` ("K/N", see `shard_of`) and `offset`/`limit`.

    Field names default to the built-in mapping, else to the first of the usual names present
    ("question"/"problem", "answer"/"final_answer"/..., "id"/"unique_id"/...); "A+B" joins two fields; without
    an id field the id is the line number. A file whose records carry their own `prompt` keeps those prompts
    unless `template` is given (then it says so on stderr). All records are validated (ids unique)."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ConfigError(f"offset and limit must be >= 0 (got offset={offset}, limit={limit})")
    if template is not None:
        resolve_template(template)  # fail on a bad template before reading anything
    from .registry import registry

    src = str(source)
    loader = registry().find("data", src)
    problems = loader.load(
        src,
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        template=template,
        tokenizer=tokenizer,
        data_dir=data_dir,
    )
    if shard:
        problems = shard_of(problems, shard)
    selected = problems[offset : None if limit is None else offset + limit]
    for p in selected:  # prompts only for what is used ("chat" templates are not free)
        if not p.prompt:
            p.prompt = format_prompt(p.question, template or "qwen-math-cot", tokenizer)
    return selected


def load_records(
    src: str,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    template: str | None = None,
    tokenizer: Any = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Problem]:
    """The core data source: a built-in set, a JSON-lines file or a hub dataset, read into Problems."""
    layout: str | None = None
    hub_mapping: dict | None = None
    if src.startswith("hf:"):
        label, rows, layout = _read_hub(src)
    elif src in BUILTIN and not Path(src).is_file():
        layout = src
        path = builtin_path(src, data_dir)
        if path is not None:
            label, rows = str(path), _read_jsonl(path)
        else:
            origin = ORIGINS[src]
            assert origin.hub is not None  # builtin_path returns None only for a set with a hub copy
            hub_id, config, split = origin.hub
            label = f"{src} (hub: {hub_id})"
            skip = (
                (((origin.hub_fields or BUILTIN[src])["answer"] or "answer"), origin.hub_skip)
                if origin.hub_skip
                else None
            )
            rows = _hub_rows(
                hub_id,
                config,
                split,
                f"built-in dataset {src!r}",
                f"or put its JSON-lines file at $ARBITRAGE_DATA_DIR/{src}/test.jsonl, or pass the file as --data",
                skip,
            )
            hub_mapping = origin.hub_fields
    else:
        path = Path(src)
        label, rows = str(path), _read_jsonl(path)
    mapping = hub_mapping or BUILTIN.get(layout or "", {})
    q_spec = question_field or mapping.get("question")
    a_spec = answer_field or mapping.get("answer")
    id_spec = id_field if id_field is not None else mapping.get("id")
    from_hub = src.startswith("hf:") or label.startswith(f"{src} (hub:")
    unit = "row" if from_hub else "line"
    guess_id = id_field is None and (layout is None or from_hub)

    problems: list[Problem] = []
    prompts: list[str | None] = []
    seen: dict[str, int] = {}
    for n, rec in rows:
        where = f"{label}: {unit} {n}"
        if q_spec is None:
            q_spec = _pick(rec, _QUESTION_GUESSES)
            if q_spec is None:
                raise DataError(
                    f"{where}: no question field (looked for {', '.join(_QUESTION_GUESSES)}; "
                    f"fields on this line: {', '.join(rec) or 'none'}); pass question_field=..."
                )
        if a_spec is None:
            a_spec = _pick(rec, _ANSWER_GUESSES)
            if a_spec is None:
                raise DataError(
                    f"{where}: no answer field (looked for {', '.join(_ANSWER_GUESSES)}; "
                    f"fields on this line: {', '.join(rec) or 'none'}); pass answer_field=..."
                )
        if guess_id:  # the first record decides: a usual id field if it has one, else line numbers
            id_spec, guess_id = (id_spec if id_spec in rec else _pick(rec, _ID_GUESSES)), False
        question = str(_field(rec, q_spec, "question", where)).strip()
        if not question:
            raise DataError(f"{where}: question field {q_spec!r} is empty")
        raw_gold = _field(rec, a_spec, "answer", where)
        pid = str(n) if not id_spec else str(_field(rec, id_spec, "id", where))
        if pid in seen:
            raise DataError(
                f"{where}: duplicate id {pid!r} in field {id_spec or '(line number)'!r} "
                f"(first on {unit} {seen[pid]}); pass id_field=... naming a unique field"
            )
        seen[pid] = n
        used = set(q_spec.split("+")) | set(a_spec.split("+")) | ({id_spec} if id_spec else set()) | {"prompt"}
        meta = {k: v for k, v in rec.items() if k not in used and _small(v)}
        meta.update(source=layout or label, line=n)
        own = rec.get("prompt") if q_spec != "prompt" else None
        if own is not None and not isinstance(own, str):
            raise DataError(f"{where}: prompt field is not a string")
        prompts.append(own)
        problems.append(Problem(id=pid, question=question, prompt="", gold=gold_answer(raw_gold, layout), meta=meta))
    if not problems:
        raise DataError(f"{label}: no records")
    has_own = any(p is not None for p in prompts)
    if has_own and template is not None:
        print(
            f"arbitrage: warning: {label} gives each problem its own 'prompt'; --template {template!r} replaces "
            f"them (leave --template out to use the file's prompts)",
            file=sys.stderr,
        )
    for p, own in zip(problems, prompts):
        p.prompt = own if own is not None and template is None else ""  # "": rendered from the template later
    return problems


def _small(v: Any) -> bool:
    """Metadata worth carrying into result files: short scalars (not solutions or long texts)."""
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200)
