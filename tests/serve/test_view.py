"""Seeing where the target was called: `arbitrage view` reports (one self-contained HTML file per run or sweep
directory), the `arbitrage` field of the server's streamed chunks (read through the official openai client), the
policies in /v1/models, and both pages in a real headless Chromium (driven over the DevTools protocol): the
server page streaming a question step by step, the report filtering its problems."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from arbitrage.cli import main
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.errors import ConfigError
from arbitrage.factory import ModelOptions, build_models
from arbitrage.policies import make_policy
from arbitrage.registry import registry
from arbitrage.results import read_records
from arbitrage.server.app import create_app
from arbitrage.server.running import serving
from arbitrage.server.service import Service
from arbitrage.types import Problem
from arbitrage.view import report_data, write_report

MODELS = ["--draft", "testbed:draft", "--target", "testbed:target", "--prm", "testbed-checker:0.1:0.1"]
CONFIG = EngineConfig(max_steps=8, max_step_tokens=48, max_total_tokens=320, concurrency=8)
SPECS = {"draft": "testbed:draft", "target": "testbed:target", "prm": "testbed-checker:0.1:0.1"}
# Greedy testbed models: rsd at tau = 1 escalates the first two steps of this question and keeps the last (at rsd's
# default 0.7 only the second is escalated, and the server's default policy, the draft, escalates none).
QUESTION, TAU = "Let a = 23. b = a + 19. c = b mod 7. What is c?", 1.0
CHROMIUM = "/usr/bin/chromium"


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


@pytest.fixture(scope="module")
def models():
    return build_models({"draft", "target", "prm"}, SPECS, ModelOptions(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def server(models):
    service = Service(models, make_policy("draft"), CONFIG, served_name="arbitrage", tokenizer=models.draft.tokenizer)
    with serving(create_app(service)) as s:
        yield s


def reference(models, question: str, threshold: float):
    done = []
    Engine(make_policy("rsd", threshold), Models(draft=models.draft, target=models.target, prm=models.prm), CONFIG).run(
        [Problem("ref", question + "\n\n", question + "\n\n")], done.append
    )
    return done[0]


def test_each_streamed_step_says_who_wrote_it_through_the_openai_client(server, models):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    ref = reference(models, QUESTION, TAU)
    assert any(r.escalated for r in ref.records) and not all(r.escalated for r in ref.records)
    chunks = list(
        client.completions.create(
            model="arbitrage",
            prompt=QUESTION + "\n\n",
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"policy": "rsd", "threshold": TAU},
        )
    )
    steps = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(steps) == len(ref.records)
    for c, r in zip(steps, ref.records):
        extra = c.model_extra["arbitrage"]
        assert c.choices[0].text.rstrip("\n") == r.text
        assert (extra["author"], extra["escalated"], extra["index"]) == (r.author, r.escalated, r.index)
        assert extra["scores"] == pytest.approx(r.scores) and extra["scores"]
        assert extra["n_tokens"] == r.n_tokens and set(extra["seconds"]) == set(r.seconds)
        assert extra["draft"] == (
            {"text": r.draft.text, "stop": r.draft.stop, "n_tokens": r.draft.n_tokens} if r.author == "target" else None
        )
        assert extra["speculation"] == r.speculation
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert final[0].model_extra["arbitrage"]["finish"] == "eos"
    assert final[0].model_extra["arbitrage"]["latency_s"] > 0
    assert chunks[-1].usage.escalated_steps == sum(r.escalated for r in ref.records)
    chat = list(
        client.chat.completions.create(
            model="arbitrage",
            stream=True,
            extra_body={"policy": "rsd", "threshold": TAU},
            messages=[{"role": "user", "content": QUESTION}],
        )
    )
    assert [c.model_extra["arbitrage"]["author"] for c in chat if c.choices and c.choices[0].finish_reason is None] == [
        r.author for r in ref.records
    ]


def test_models_lists_the_policies_this_server_can_run_and_the_page_is_served(server):
    entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    names = [p["name"] for p in entry["policies"]]
    loaded = {"draft", "target", "prm"}
    assert names == [n for n, c in registry().policies.items() if c.needs <= loaded]
    assert "rsd" in names and "router" not in names and "specreason" not in names
    for p in entry["policies"]:
        cls = registry().policies[p["name"]]
        assert p["threshold_range"] == (list(cls.threshold_range) if cls.threshold_range else None)
        assert p["default_threshold"] == cls.default_threshold
    assert entry["default_policy"] == {"name": "draft", "threshold": None}
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert httpx.get(f"{server.url}/{asset}").status_code == 200, asset
    assert {"static/app.js", "static/steps.js", "static/style.css"} <= set(re.findall(r'"(static/[^"]+)"', page.text))
    assert "http" not in re.sub(r"<!--.*?-->", "", page.text)  # no CDN: it works offline


# --- (c) a real browser ----------------------------------------------------------------------------------------


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor >= 10, so that moving it to 3 or 4 in the child clobbers nothing."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
    answers on fd 4, each one JSON message ended by a NUL byte). `--dump-dom` cannot wait for a streamed answer:
    its virtual time runs out while the fetch body is still arriving."""

    def __init__(self, width: int = 1200, height: int = 900):
        self.profile = tempfile.TemporaryDirectory()
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _above_4(to_chrome_r), _above_4(from_chrome_w)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={self.profile.name}",
            "--remote-debugging-pipe",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # the pipe's ends become the browser's fds 3 and 4 by the shell's redirections (no preexec_fn: the
        # server's threads run in this process)
        move = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", move, "chromium", CHROMIUM, *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.w, self.r = os.fdopen(to_chrome_w, "wb", buffering=0), os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf, self.ids, self.session = b"", 0, None
        self.width, self.height = width, height

    def send(self, method: str, params: dict | None = None, browser: bool = False) -> dict:
        self.ids += 1
        msg = {"id": self.ids, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                part = self.r.read(1 << 16)
                if not part:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self.buf += part
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.ids:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str) -> None:
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)[
                "sessionId"
            ]
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            )
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text", "script error"))
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"the page never satisfied {expression!r}: body is {self.js('document.body.outerHTML')}")

    def screenshot(self, path, full_page: bool = False) -> None:
        params: dict = {"format": "png"}
        if full_page:
            height = self.js("document.documentElement.scrollHeight")
            params.update(
                captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
            )
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.w.close()
        self.r.close()
        self.profile.cleanup()


def shown_number(v: float) -> str:
    """A score as steps.js's num() writes it."""
    if v == int(v):
        return str(int(v))
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.3f}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:.2e}")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no headless browser: {CHROMIUM} is missing (Debian: apt-get install chromium)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def test_the_server_page_streams_a_question_step_by_step(browser, server, models, tmp_path):
    ref = reference(models, QUESTION, TAU)
    assert [r.escalated for r in ref.records] != [r.escalated for r in reference(models, QUESTION, 0.7).records]
    query = urllib.parse.urlencode({"q": QUESTION, "policy": "rsd", "threshold": str(TAU), "autorun": "1"})
    browser.open(f"{server.url}/?{query}")
    assert (
        browser.wait("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state") == "done"
    ), browser.js("document.getElementById('steps').innerText")
    dom = browser.js("""(() => Array.from(document.querySelectorAll('#steps .step')).map(s => ({
        author: s.dataset.author, escalated: s.dataset.escalated === 'true',
        badge: s.querySelector('.badge').textContent, text: s.querySelector(':scope > .step-text').textContent,
        proposal: (s.querySelector('.proposal-draft .step-text') || {}).textContent || null,
        head: s.querySelector('.step-head').textContent})))()""")
    assert [(d["author"], d["escalated"], d["text"]) for d in dom] == [
        (r.author, r.escalated, r.text) for r in ref.records
    ]
    for d, r in zip(dom, ref.records):
        assert d["badge"] == ("escalated \u2192 target" if r.escalated else "draft \u2713 kept")
        assert d["proposal"] == (r.draft.text if r.author == "target" else None)
        assert f"PRM(draft) {shown_number(r.scores['prm_draft'])}" in d["head"]
        assert f"{r.n_tokens} tok" in d["head"]
    usage = browser.js("document.getElementById('usage').innerText")
    assert f"steps\t{len(ref.records)}" in usage and "latency (server)" in usage
    assert f"target tokens\t{ref.counts['target_tokens']}" in usage
    assert browser.js("document.getElementById('policy').options.length") >= 5
    browser.screenshot(tmp_path / "serve_page.png")
    assert (tmp_path / "serve_page.png").read_bytes()[:4] == b"\x89PNG"


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
