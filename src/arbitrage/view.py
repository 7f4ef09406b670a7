"""`arbitrage view RUN_DIR`: one self-contained HTML file showing where the target was called.

RUN_DIR is a run directory (results.jsonl, or results.jsonl.gz, and metrics.json) or a sweep directory
(sweep.json and its points' directories). The report holds the metrics (a table of the points for a sweep, with a
point selector), the sweep's plots, and every problem's steps coloured by who wrote them, as the page of
`arbitrage serve` shows them, filterable by correct / wrong and by escalated steps. Everything is inside the one
file: the server page's CSS and step rendering (server/static/) inlined, the data as JSON, the plots as base64 data
URIs; it opens offline, from anywhere.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import os
import time
from typing import Any

from .errors import ConfigError, DataError
from .records import ProblemRecord
from .results import METRICS, RESULTS, compute_metrics, read_records

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server", "static")
SWEEP = "sweep.json"
REPORT = "report.html"
PROPOSAL_FIELDS = ("text", "stop", "n_tokens")  # per-token features (logprobs, hidden states) stay out of reports


def kind_of(path: str) -> str:
    """ "sweep" or "run"; a ConfigError naming what was looked for when the directory is neither."""
    if not os.path.isdir(path):
        raise ConfigError(
            f"{path}: no such directory (give a run directory with {RESULTS} or a sweep directory with {SWEEP})"
        )
    if os.path.isfile(os.path.join(path, SWEEP)):
        return "sweep"
    if results_path(path) is not None:
        return "run"
    raise ConfigError(
        f"{path} is neither a run directory (no {RESULTS} or {RESULTS}.gz) nor a sweep directory "
        f"(no {SWEEP}); give the --out of `arbitrage run` or `arbitrage sweep`"
    )


def results_path(run_dir: str) -> str | None:
    for name in (RESULTS, RESULTS + ".gz"):
        p = os.path.join(run_dir, name)
        if os.path.isfile(p):
            return p
    return None


def read_run(run_dir: str) -> list[ProblemRecord]:
    """The records of a run directory, from results.jsonl or (as archived runs keep them) results.jsonl.gz."""
    path = results_path(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir}: no {RESULTS} or {RESULTS}.gz")
    if not path.endswith(".gz"):
        return read_records(path)
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{n}: not a JSON results line ({exc})") from exc
                records.append(ProblemRecord.from_json(d, f"{path}:{n}"))
    return records


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def _finite(obj):
    """The object with every NaN / infinity as None (the browser's JSON.parse takes no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _proposal(p) -> dict | None:
    return None if p is None else {k: getattr(p, k) for k in PROPOSAL_FIELDS}


def step_data(s) -> dict:
    """A step as the page draws it (the shape of the server stream's `arbitrage` field, with its text)."""
    return {
        "index": s.index,
        "author": s.author,
        "escalated": s.escalated,
        "text": s.text,
        "stop": s.stop,
        "n_tokens": s.n_tokens,
        "scores": {k: v for k, v in s.scores.items() if not isinstance(v, (list, dict))},
        "draft": _proposal(s.draft) if s.author != "draft" else None,
        "target": _proposal(s.target) if s.author != "target" else None,
        "discarded_draft_tokens": s.discarded_draft_tokens,
        "seconds": s.seconds,
        "speculation": s.speculation,
    }


def problem_data(r: ProblemRecord) -> dict:
    return {
        "id": r.id,
        "question": r.question,
        "gold": r.gold,
        "prediction": r.prediction,
        "correct": r.correct,
        "grade_reason": r.grade_reason,
        "finish": r.finish,
        "latency_s": r.latency_s,
        "seconds": r.seconds,
        "counts": r.counts,
        "steps": [step_data(s) for s in r.steps],
    }


def _label(m: dict) -> str:
    from .sweep_report import label

    return label(m) if m.get("policy") else "run"


def run_point(run_dir: str, metrics: dict | None = None, name: str | None = None) -> dict:
    """One point of the report: its metrics (metrics.json, else computed from the records) and its problems."""
    records = read_run(run_dir)
    if metrics is None:
        mpath = os.path.join(run_dir, METRICS)
        if os.path.isfile(mpath):
            metrics = _read_json(mpath)
        else:
            first = records[0] if records else None
            metrics = compute_metrics(records, first.policy if first else "", first.threshold if first else None)
    return {
        "label": name or _label(metrics),
        "dir": os.path.basename(os.path.normpath(run_dir)),
        "metrics": metrics,
        "frontier": False,
        "problems": [problem_data(r) for r in records],
        "note": None,
    }


MATCH_KEYS = ("threshold", "n", "accuracy", "steps", "escalated_steps", "latency_s_mean")


def _point_dir(sweep_dir: str, m: dict, archived: list[tuple[str, dict]]) -> str | None:
    """Where a sweep point's results are: its `dir` (relative to the sweep), else the one run directory under the
    sweep (or its points/, where archived sweeps keep them) whose metrics.json is this point's."""
    rel = m.get("dir")
    if rel:
        where = os.path.normpath(os.path.join(sweep_dir, rel))
        if results_path(where) is not None:
            return where
    same = [d for d, dm in archived if all(dm.get(k) == m.get(k) for k in MATCH_KEYS)]
    return same[0] if len(same) == 1 else None


def _archived(sweep_dir: str) -> list[tuple[str, dict]]:
    out = []
    for base in (sweep_dir, os.path.join(sweep_dir, "points")):
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            d = os.path.join(base, name)
            if os.path.isfile(os.path.join(d, METRICS)) and results_path(d) is not None:
                try:
                    out.append((d, _read_json(os.path.join(d, METRICS))))
                except DataError:
                    continue
    return out


def sweep_points(sweep_dir: str, summary: dict) -> list[dict]:
    on_front = {f.get("label") for fs in (summary.get("frontiers") or {}).values() for f in fs}
    points, archived = [], None
    for m in summary.get("points") or []:
        rel = m.get("dir")
        where = os.path.normpath(os.path.join(sweep_dir, rel)) if rel else None
        if where is None or results_path(where) is None:
            archived = _archived(sweep_dir) if archived is None else archived
            where = _point_dir(sweep_dir, m, archived) or where
        if where is not None and results_path(where) is not None:
            p = run_point(where, metrics=m, name=_label(m))
        else:
            p = {
                "label": _label(m),
                "metrics": m,
                "problems": [],
                "note": f"this point's results are not in {where or sweep_dir} (moved or not copied): "
                f"its metrics come from {SWEEP}",
            }
        p["dir"], p["frontier"] = rel, _label(m) in on_front
        points.append(p)
    if not points:
        raise DataError(f"{os.path.join(sweep_dir, SWEEP)}: no points")
    return points


def _image(path: str) -> dict:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return {"name": os.path.basename(path), "src": f"data:image/png;base64,{data}"}


def report_data(path: str) -> dict:
    """Everything the report shows, as one JSON-able dict."""
    path = os.path.normpath(path)
    kind = kind_of(path)
    data: dict[str, Any] = {
        "kind": kind,
        "source": path,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "plots": [],
        "summary_name": None,
        "summary_text": None,
    }
    if kind == "run":
        data["points"] = [run_point(path)]
        return data
    summary = _read_json(os.path.join(path, SWEEP))
    if not isinstance(summary, dict):
        raise DataError(f"{os.path.join(path, SWEEP)}: not a sweep summary (expected an object with 'points')")
    data["points"] = sweep_points(path, summary)
    # the sweep's plots (sweep.json names them; any other PNG beside it too), accuracy against latency first
    found = set(summary.get("plots") or []) | {n for n in os.listdir(path) if n.endswith(".png")}
    names = sorted(found, key=lambda n: (n != "accuracy_vs_latency.png", n))
    data["plots"] = [_image(os.path.join(path, n)) for n in names if os.path.isfile(os.path.join(path, n))]
    text = os.path.join(path, "sweep.txt")
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            data["summary_name"], data["summary_text"] = "sweep.txt (the frontier and matched-accuracy table)", f.read()
    return data


def _asset(name: str) -> str:
    with open(os.path.join(STATIC, name), encoding="utf-8") as f:
        text = f.read()
    if "</" + "script" in text.lower() or "</" + "style" in text.lower():
        raise ValueError(f"{name} cannot be inlined: it closes its own tag")
    return text


def render(data: dict) -> str:
    """The report's HTML: the page's CSS and scripts inlined, the data as JSON (with '<', '>' and '&' escaped, so
    no text in it can end the script element)."""
    payload = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(f"arbitrage report: {os.path.basename(data['source']) or data['source']}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{_asset("style.css")}
</style>
</head>
<body data-state="loading">
<header class="top">
  <h1>arbitrage</h1>
  <span class="sub">where the target was called: {html.escape(data["source"])}</span>
</header>
<main id="report"><noscript>This report needs JavaScript to draw its problems.</noscript></main>
<script type="application/json" id="data">{payload}</script>
<script>
{_asset("steps.js")}
</script>
<script>
{_asset("report.js")}
</script>
</body>
</html>
"""


def write_report(path: str, out: str | None = None) -> str:
    """Write the report of a run or sweep directory to `out` (default PATH/report.html); returns where."""
    return _save(report_data(path), out or os.path.join(path, REPORT))


def _save(data: dict, out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render(data))
    os.replace(tmp, out)
    return out


def cmd_view(args) -> int:
    data = report_data(args.run_dir)
    out = _save(data, args.out or os.path.join(args.run_dir, REPORT))
    if not args.quiet:
        n = sum(len(p["problems"]) for p in data["points"])
        print(f"wrote {out}: {len(data['points'])} point(s), {n} problems; open it in a browser")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "view",
        help="one self-contained HTML report of a run or sweep: where the target was called",
        description="Write one self-contained HTML file (no network needed to open it) showing a run "
        "directory's (or a sweep directory's) metrics, plots and every problem's steps "
        "coloured by who wrote them: the draft's kept, or escalated to the target.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out of `arbitrage run` or `arbitrage sweep`")
    p.add_argument("--out", help=f"the HTML file to write (default RUN_DIR/{REPORT})")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_view)
