"""`arbitrage view` reports: one self-contained HTML file per run or sweep directory, holding every problem,
step and metric; and the report filtering its problems in a real headless Chromium."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from arbitrage.cli import main
from arbitrage.errors import ConfigError
from arbitrage.results import read_records
from arbitrage.view import report_data, write_report

MODELS = ["--draft", "testbed:draft", "--target", "testbed:target", "--prm", "testbed-checker:0.1:0.1"]


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "run"
    assert (
        main(
            [
                "run",
                "--policy",
                "rsd",
                "--threshold",
                "0.5",
                *MODELS,
                "--data",
                "testbed:test:4",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "sweep"
    assert (
        main(
            [
                "sweep",
                "--policies",
                "draft,rsd",
                "--thresholds",
                "rsd=0.5",
                *MODELS,
                "--data",
                "testbed:test:3",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def embedded(html: str) -> dict:
    """The report's data, read back from its <script type="application/json" id="data"> element."""
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.DOTALL)
    assert m, "no embedded data"
    return json.loads(m.group(1))


# --- (a) the report file -----------------------------------------------------------------------------------------


def test_run_report_holds_every_problem_step_and_metric(run_dir):
    out = write_report(str(run_dir))
    assert out == str(run_dir / "report.html")
    html = Path(out).read_text(encoding="utf-8")
    data = embedded(html)
    records = read_records(run_dir)
    assert data["kind"] == "run" and len(data["points"]) == 1 and data["plots"] == []
    point = data["points"][0]
    assert point["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert [p["id"] for p in point["problems"]] == [r.id for r in records] and len(records) == 4
    for p, r in zip(point["problems"], records):
        assert p["question"] == r.question and p["correct"] == r.correct and p["prediction"] == r.prediction
        assert [s["text"] for s in p["steps"]] == [s.text for s in r.steps]
        assert [(s["author"], s["escalated"]) for s in p["steps"]] == [(s.author, s.escalated) for s in r.steps]
        assert [s["scores"] for s in p["steps"]] == [s.scores for s in r.steps]
        for s, rs in zip(p["steps"], r.steps):  # the discarded draft proposal travels with each escalated step
            assert (s["draft"] or {}).get("text") == (rs.draft.text if rs.author == "target" else None)
    steps = [s for r in records for s in r.steps]
    assert any(s.escalated for s in steps) and not all(s.escalated for s in steps)
    # self-contained: the page's CSS and step rendering inlined, nothing fetched from anywhere
    assert ".step.author-target" in html and "function renderStep" in html and "report-head" in html
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=", html)
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_the_command_writes_where_asked_and_refuses_a_directory_that_is_neither(run_dir, tmp_path, capsys):
    assert main(["view", str(run_dir), "--out", str(tmp_path / "sub" / "r.html"), "--quiet"]) == 0
    assert embedded((tmp_path / "sub" / "r.html").read_text())["points"][0]["problems"]
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "neither a run directory" in err and "results.jsonl" in err and "sweep.json" in err
    with pytest.raises(ConfigError, match="no such directory"):
        report_data(str(tmp_path / "missing"))
    assert not (tmp_path / "empty" / "report.html").exists()


def test_gzipped_results_are_read(run_dir, tmp_path):
    copy = tmp_path / "archived"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report.html", ".lock"))
    with open(copy / "results.jsonl", "rb") as f, gzip.open(copy / "results.jsonl.gz", "wb") as g:
        g.write(f.read())
    (copy / "results.jsonl").unlink()
    point = report_data(str(copy))["points"][0]
    assert [p["id"] for p in point["problems"]] == [r.id for r in read_records(run_dir)]


def test_no_text_in_the_data_can_end_the_script(run_dir, tmp_path):
    copy = tmp_path / "nasty"
    copy.mkdir()
    line = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])
    line["question"] = "a </script ><script>alert(1)</SCRIPT> & <!-- <script> <b>b</b>"
    (copy / "results.jsonl").write_text(json.dumps(line) + "\n")
    html = Path(write_report(str(copy))).read_text()
    opening = '<script type="application/json" id="data">'
    start = html.index(opening) + len(opening)
    payload = html[start : html.lower().index("</script", start)]  # where a browser ends the element
    assert "<!--" not in payload and "<b>" not in html
    data = json.loads(payload)
    assert data["points"][0]["problems"][0]["question"] == line["question"]
    assert data["points"][0]["metrics"]["n"] == 1  # no metrics.json: computed from the records


def test_sweep_report_embeds_the_plot_and_every_point(sweep_dir):
    html = Path(write_report(str(sweep_dir))).read_text()
    data = embedded(html)
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert data["kind"] == "sweep" and [p["label"] for p in data["points"]] == ["draft", "rsd@0.5"]
    for p, m in zip(data["points"], summary["points"]):
        assert p["metrics"]["accuracy"] == m["accuracy"] and len(p["problems"]) == 3 and p["note"] is None
        assert [q["id"] for q in p["problems"]] == [r.id for r in read_records(sweep_dir / m["dir"])]
    plots = {p["name"]: p["src"] for p in data["plots"]}
    assert data["plots"][0]["name"] == "accuracy_vs_latency.png"
    png = (sweep_dir / "accuracy_vs_latency.png").read_bytes()
    assert base64.b64decode(plots["accuracy_vs_latency.png"].split(",", 1)[1]) == png
    assert data["summary_text"] == (sweep_dir / "sweep.txt").read_text()


def test_a_moved_sweep_point_is_found_by_its_metrics_and_a_lost_one_is_noted(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    (copy / "points").mkdir()
    shutil.move(str(copy / "draft"), str(copy / "points" / "renamed"))  # an archive's layout
    shutil.rmtree(copy / "rsd-0.5")
    draft, rsd = report_data(str(copy))["points"]
    assert len(draft["problems"]) == 3 and draft["note"] is None
    assert rsd["problems"] == [] and "not in" in rsd["note"] and rsd["metrics"]["policy"] == "rsd"


# --- (b) the stream's extra field, through the official client -----------------------------------------------------


def test_the_report_filters_its_problems_in_a_browser(browser, run_dir, sweep_dir, tmp_path):
    records = read_records(run_dir)
    browser.open(Path(write_report(str(run_dir))).as_uri())
    browser.wait("document.body.dataset.state === 'ready'")

    def shown():
        return browser.js(
            "[document.querySelectorAll('.problem').length, document.querySelectorAll('.step').length,"
            " document.querySelectorAll('.step[data-escalated=true]').length]"
        )

    n_esc = sum(s.escalated for r in records for s in r.steps)
    assert shown() == [len(records), sum(len(r.steps) for r in records), n_esc]
    assert "accuracy" in browser.js("document.querySelector('.metrics-table').innerText")

    def choose(select_id: str, value: str):
        browser.js(
            f"(() => {{ const s = document.getElementById('{select_id}'); s.value = '{value}';"
            f" s.dispatchEvent(new Event('change')); }})()"
        )

    choose("filter-escalation", "with")
    with_esc = [r for r in records if any(s.escalated for s in r.steps)]
    assert shown()[0] == len(with_esc) and browser.js(
        "Array.from(document.querySelectorAll('.problem')).map(p => p.dataset.id)"
    ) == [r.id for r in with_esc]
    browser.js("document.getElementById('filter-only-escalated').click()")
    assert shown() == [len(with_esc), n_esc, n_esc]
    choose("filter-escalation", "all")
    browser.js("document.getElementById('filter-only-escalated').click()")
    choose("filter-outcome", "wrong")
    assert shown()[0] == sum(not r.correct for r in records)
    choose("filter-outcome", "correct")
    assert shown()[0] == sum(r.correct for r in records)
    browser.screenshot(tmp_path / "view_report.png", full_page=True)
    assert (tmp_path / "view_report.png").read_bytes()[:4] == b"\x89PNG"

    browser.open(Path(write_report(str(sweep_dir))).as_uri())
    browser.wait("document.body.dataset.state === 'ready'")
    assert browser.js("document.body.dataset.point") == "draft"
    assert browser.wait(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0) && document.images.length"
    )  # the plot decodes from its data URI
    choose("point", "1")
    assert browser.js("document.body.dataset.point") == "rsd@0.5"
    assert browser.js("document.querySelectorAll('.problem').length") == 3
    assert browser.js("document.querySelector('table.points tr.selected td').textContent") == "rsd@0.5"
