"""Router training data from `arbitrage run --policy generate` results (docs/method.md, "Router training").

One example per recorded step: the context (question and the earlier accepted steps, with their authors), the
draft's proposal with the features the draft computed while writing it, the advantage
A = PRM(target step) - PRM(draft step) and the label 1[A > margin]. Problems are split into train and
validation as a whole (no problem on both sides); the training split can be balanced by seeded downsampling of
its majority class. The validation split keeps its natural class mix, so its Spearman/accuracy figures describe
the steps a router will actually see.

Files written to OUT: `train.jsonl`, `validation.jsonl` and `meta.json` (separator, author tags, margin, counts).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

from ..errors import DataError
from ..formats import RouterFormat
from ..records import FEATURES as DRAFT_FEATURES
from ..records import ProblemRecord, Proposal
from ..results import RESULTS, check_shards, read_manifest
from ..types import DEFAULT_SEPARATOR, Step

TRAIN, VALIDATION, META = "train.jsonl", "validation.jsonl", "meta.json"


@dataclass
class Example:
    """One step of one problem, as the router sees it at run time, with its advantage and label."""

    problem_id: str
    index: int
    question: str
    history: list[dict]  # earlier accepted steps: {"author", "text", "stop"}
    draft: dict  # the draft's proposal: text, stop, n_tokens and per-token features
    advantage: float
    label: int
    prm_draft: float
    prm_target: float
    source: str = ""  # FILE:LINE it came from
    extra: dict = field(default_factory=dict)

    def steps(self) -> list[Step]:
        return [Step(author=h["author"], text=h["text"], stop=h["stop"], n_tokens=0) for h in self.history]

    def draft_step(self) -> Step:
        return draft_step_from_record(self.draft)

    def to_json(self, separator: str, author_tags: bool) -> dict:
        return {
            "problem_id": self.problem_id,
            "index": self.index,
            "label": self.label,
            "advantage": self.advantage,
            "prm_draft": self.prm_draft,
            "prm_target": self.prm_target,
            "input": RouterFormat(separator, author_tags).text(self.question, self.steps(), self.draft["text"]),
            "question": self.question,
            "history": self.history,
            "draft": self.draft,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "") -> Example:
        try:
            return cls(
                problem_id=str(d["problem_id"]),
                index=int(d["index"]),
                question=d["question"],
                history=list(d["history"]),
                draft=dict(d["draft"]),
                advantage=float(d["advantage"]),
                label=int(d["label"]),
                prm_draft=float(d["prm_draft"]),
                prm_target=float(d["prm_target"]),
                source=d.get("source", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{where}: not a router training example ({type(exc).__name__}: {exc}); "
                f"make it with `arbitrage router build-data`"
            ) from exc


def draft_step_from_record(rec: dict) -> Step:
    """The draft's Step as the engine handed it to the router at run time (features in `extras`)."""
    return Proposal.from_json(rec, "example", "draft").to_step("draft")


# --- reading results --------------------------------------------------------------------------------------
def _results_path(path: str) -> str:
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: no such results file (give OUT/results.jsonl of `arbitrage run --policy "
            f"generate`, or its OUT directory; .jsonl.gz is read too)"
        )
    return path


def run_separator(results_path: str) -> str | None:
    """The step separator recorded in the run's manifest (run.json beside results.jsonl), if there is one."""
    manifest = read_manifest(os.path.dirname(results_path))
    sep = (manifest or {}).get("settings", {}).get("separator")
    return sep if isinstance(sep, str) and sep else None


LABEL_FROM = ("mean", "max", "first")


def _number(x) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def target_score(scores: dict, label_from: str) -> float | None:
    """The target's PRM score the label is taken from: the first sample's, or the mean or max over the N target
    samples of `generate --target-samples N` (all three are the one score when N = 1)."""
    if label_from == "mean" and scores.get("prm_target_mean") is not None:
        return scores["prm_target_mean"]
    if label_from == "max" and scores.get("prm_target_max") is not None:
        return scores["prm_target_max"]
    return scores.get("prm_target")


def examples_from_record(rec: ProblemRecord, where: str, margin: float, label_from: str = "mean") -> Iterator[Example]:
    """The examples of one results line (one problem). Raises DataError naming FILE:LINE and the field."""
    history: list[dict] = []
    for k, s in enumerate(rec.steps):
        f = f"steps[{k}]"
        pd, pt = s.scores.get("prm_draft"), target_score(s.scores, label_from)
        if not (_number(pd) and _number(pt)):
            raise DataError(
                f"{where}: {f}.scores: needs numbers prm_draft and prm_target (record the data with "
                f"`arbitrage run --policy generate`)"
            )
        adv = pt - pd if label_from != "first" or s.scores.get("advantage") is None else s.scores["advantage"]
        if not _number(adv):
            raise DataError(f"{where}: {f}.scores.advantage: not a finite number")
        draft = s.draft_proposal()
        if draft is None:
            raise DataError(
                f"{where}: {f}.draft: missing, and the step is the target's, so the draft's proposal is unknown"
            )
        keep = draft.to_json()
        keep["n_tokens"] = int(draft.n_tokens or len(draft.logprobs or []))
        yield Example(
            problem_id=rec.id,
            index=k,
            question=rec.question,
            history=list(history),
            draft=keep,
            advantage=float(adv),
            label=int(adv > margin),
            prm_draft=float(pd),
            prm_target=float(pt),
            source=where,
        )
        history.append({"author": s.author, "text": s.text, "stop": s.stop})


def read_results(
    paths: Sequence[str], margin: float = 0.0, label_from: str = "mean"
) -> tuple[list[Example], str | None]:
    """Every step of every problem in the results files, and the separator their runs used (if recorded)."""
    if label_from not in LABEL_FROM:
        raise DataError(f"label_from must be one of {LABEL_FROM}, not {label_from!r}")
    check_shards([_results_path(p) for p in paths])
    examples: list[Example] = []
    seps = set()
    seen: dict[str, str] = {}
    for p in paths:
        path = _results_path(p)
        sep = run_separator(path)
        if sep is not None:
            seps.add(sep)
        settings = dict((read_manifest(os.path.dirname(path)) or {"settings": {}})["settings"])
        settings.pop("shard", None)
        run_key = json.dumps(settings, sort_keys=True)  # shards of one run share it
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: (line): not valid JSON ({exc})") from exc
                rec = ProblemRecord.from_json(d, f"{path}:{n}")
                key = f"{run_key}|{rec.id}"
                if key in seen and seen[key] != path:
                    raise DataError(f"{path}:{n}: problem {rec.id!r} is also in {seen[key]} (overlapping runs)")
                seen[key] = path
                examples.extend(examples_from_record(rec, f"{path}:{n}", margin, label_from))
    if len(seps) > 1:
        raise DataError(
            f"the results files come from runs with different step separators {sorted(seps)!r}; "
            f"build the data from runs with one separator"
        )
    return examples, next(iter(seps), None)


# --- splitting and balancing ------------------------------------------------------------------------------
def split_by_problem(examples: Sequence[Example], val_fraction: float, seed: int) -> tuple[list, list]:
    """Train/validation by problem id: a problem's steps all land on one side. At least one problem goes to
    each side when val_fraction > 0 and there are two or more problems."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), not {val_fraction}")
    ids = sorted({e.problem_id for e in examples})
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val_ids = set(ids[:n_val])
    return [e for e in examples if e.problem_id not in val_ids], [e for e in examples if e.problem_id in val_ids]


def balance(examples: Sequence[Example], seed: int) -> list[Example]:
    """Downsample the majority class at random (seeded) to the minority's size; order is kept."""
    by = {0: [i for i, e in enumerate(examples) if e.label == 0], 1: [i for i, e in enumerate(examples) if e.label]}
    n = min(len(by[0]), len(by[1]))
    if n == 0:
        return list(examples)
    rng = random.Random(seed)
    keep = set(by[0] if len(by[0]) == n else rng.sample(by[0], n))
    keep |= set(by[1] if len(by[1]) == n else rng.sample(by[1], n))
    return [e for i, e in enumerate(examples) if i in keep]


def class_counts(examples: Iterable[Example]) -> dict:
    labels = [e.label for e in examples]
    return {"n": len(labels), "escalate": sum(labels), "keep": len(labels) - sum(labels)}


# --- files ------------------------------------------------------------------------------------------------
def write_jsonl(path: str, examples: Iterable[Example], separator: str, author_tags: bool) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e.to_json(separator, author_tags), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_meta(data_dir: str) -> dict:
    path = os.path.join(os.path.expanduser(data_dir), META)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def data_file(data_dir_or_file: str, split: str) -> str:
    """`DIR/split.jsonl` for a data directory, or the file itself."""
    p = os.path.expanduser(data_dir_or_file)
    if os.path.isdir(p):
        p = os.path.join(p, TRAIN if split == "train" else VALIDATION)
    if not os.path.isfile(p):
        raise DataError(f"{p}: no such file (make router data with `arbitrage router build-data`)")
    return p


def load_examples(path: str) -> list[Example]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc})") from exc
                out.append(Example.from_json(d, f"{path}:{n}"))
    return out


def build_data(
    results: Sequence[str] | str,
    out_dir: str,
    margin: float = 0.0,
    balance_train: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    separator: str | None = None,
    author_tags: bool = True,
    label_from: str = "mean",
) -> dict:
    """Read `generate` results, label, split by problem, balance the training split, write OUT/*.jsonl.
    `label_from`: the target score of the advantage, with several target samples per step (mean, max, first).

    Returns the class counts: {"all", "train_before_balance", "train", "validation"} each {n, escalate, keep},
    plus the numbers of problems on each side."""
    if isinstance(results, str):
        results = [results]
    if not results:
        raise DataError("no results files given")
    if not math.isfinite(margin):
        raise DataError(f"margin must be a finite number, not {margin}")
    examples, run_sep = read_results(results, margin, label_from)
    if not examples:
        raise DataError(f"no steps in {', '.join(results)}: nothing to train on")
    sep = separator if separator is not None else (run_sep or DEFAULT_SEPARATOR)
    train, val = split_by_problem(examples, val_fraction, seed)
    train_bal = balance(train, seed) if balance_train else train
    os.makedirs(out_dir, exist_ok=True)
    write_jsonl(os.path.join(out_dir, TRAIN), train_bal, sep, author_tags)
    write_jsonl(os.path.join(out_dir, VALIDATION), val, sep, author_tags)
    counts = {
        "all": class_counts(examples),
        "train_before_balance": class_counts(train),
        "train": class_counts(train_bal),
        "validation": class_counts(val),
        "problems": {"train": len({e.problem_id for e in train}), "validation": len({e.problem_id for e in val})},
    }
    features = [k for k in DRAFT_FEATURES if all(k in e.draft for e in examples)]
    meta = {
        "separator": sep,
        "author_tags": author_tags,
        "margin": margin,
        "label_from": label_from,
        "balanced": balance_train,
        "val_fraction": val_fraction,
        "seed": seed,
        "sources": [os.path.abspath(_results_path(p)) for p in results],
        "draft_features": features,
        "counts": counts,
    }
    with open(os.path.join(out_dir, META), "w") as f:
        json.dump(meta, f, indent=2)
    return counts
