"""Components that describe their own options (options.py): checks and errors, the flags of run/sweep/serve and
the server's request fields built from the declarations, and a plugin installed through real entry-point
metadata (a .dist-info on sys.path) that adds a policy with an option and a backend with a setting in one
file each, reaching the command line and the server without any change to the core."""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest

from arbitrage.errors import ConfigError
from arbitrage.options import Option
from arbitrage.policies import make_policy


def test_option_checks_types_and_ranges_and_names_flag_or_field():
    opt = Option("decide_after", int, None, "K", minimum=1)
    assert opt.check(3) == 3 and opt.check(3.0) == 3 and opt.check(None) is None
    with pytest.raises(ConfigError, match="--decide-after must be >= 1"):
        opt.check(0)
    with pytest.raises(ConfigError, match="'decide_after' must be an integer"):
        opt.check("2", field=True)
    with pytest.raises(ConfigError, match="must be an integer"):
        opt.check(2.5)
    flag = Option("speculate", bool, False)
    assert flag.check(True) is True
    with pytest.raises(ConfigError, match="true or false"):
        flag.check(1)


def test_policies_check_their_declared_options():
    assert make_policy("router", 0.5, decide_after=2).decide_after == 2
    with pytest.raises(ConfigError, match="--decide-after must be >= 1"):
        make_policy("router", 0.5, decide_after=0)
    with pytest.raises(ConfigError, match="does not apply to policy 'draft'"):
        make_policy("draft", decide_after=2)
    assert make_policy("target", speculate=True).needs == {"target", "draft"}


PLUGIN = '''
"""An example plugin: a policy with an option and a backend with a setting, one file."""
from arbitrage.options import Option
from arbitrage.policies import Decision, Draft, Target, ThresholdPolicy
from arbitrage.types import Generation


class EveryNth(ThresholdPolicy):
    """Escalates every `every`-th step (a scripted policy)."""

    name, needs = "every-nth", frozenset({"draft", "target"})
    threshold_range, default_threshold = (0.0, 1.0), 0.5
    summary = "escalate every N-th step"
    options = (Option("every", int, 2, "escalate steps whose index is a multiple of N", minimum=1),)

    def __init__(self, threshold=None, every=2):
        super().__init__(threshold)
        self.every = every
        self.step = 0

    def decide(self):
        d = yield Draft()
        self.step += 1
        if self.step % self.every == 0:
            t = yield Target(speculation=d)
            return Decision(t, True, draft=d, target=t)
        return Decision(d, False, draft=d)


class Echo:
    """Writes "<name> says <word>" steps, ending after three."""

    def __init__(self, name, word):
        self.name, self.separator, self.word = name, "\\n\\n", word

    def generate(self, requests):
        out = []
        for r in requests:
            last = len(r.steps) >= 2
            text = f"{self.name} says {self.word}" + (" \\\\boxed{1}" if last else "")
            out.append(Generation(text=text, stop="eos" if last else "separator", token_ids=[1, 2, 3]))
        return out

    def release(self, key):
        pass


def _echo(spec, role, opts, separator):
    return Echo(role, (opts.extra or {}).get("echo_word", "hello"))


def register(registry):
    registry.add_policy(EveryNth)
    registry.add_loader("generator", "echo", lambda s: s.startswith("echo:"), _echo, priority=50,
                        options=(Option("echo_word", str, "hello", "the word the echo models say"),))
'''


@pytest.fixture
def example_plugin(tmp_path, monkeypatch):
    """The plugin installed as a distribution: its module and a .dist-info naming it in the entry-point group."""
    from arbitrage import registry as reg

    (tmp_path / "arbitrage_example_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "arbitrage_example_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: arbitrage-example-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[arbitrage.plugins]\nexample = arbitrage_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.reset_registry()
    yield reg.registry()
    reg.reset_registry()


def test_a_plugins_policy_option_and_backend_setting_reach_run_and_sweep(example_plugin, tmp_path, capsys):
    from arbitrage.cli import main

    assert "example" in example_plugin.plugins
    for command in ("run", "sweep", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--every EVERY" in help_text and "every-nth: escalate steps whose index" in help_text, command
        assert "--echo-word ECHO_WORD" in help_text, command
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "What is 1?", "answer": "1"}) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--policy",
                "every-nth",
                "--every",
                "3",
                "--draft",
                "echo:d",
                "--target",
                "echo:t",
                "--echo-word",
                "howdy",
                "--data",
                str(data),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    steps = json.loads((out / "results.jsonl").read_text())["steps"]
    assert [s["escalated"] for s in steps] == [False, False, True]  # every third step
    assert all("howdy" in s["text"] for s in steps)  # the backend's own setting reached it
    run = json.loads((out / "run.json").read_text())["settings"]
    assert run["policy_options"] == {"every": 3} and run["extra"] == {"echo_word": "howdy"}
    assert (
        main(
            [
                "run",
                "--policy",
                "every-nth",
                "--every",
                "0",
                "--draft",
                "echo:d",
                "--target",
                "echo:t",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "bad"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "--every must be >= 1" in capsys.readouterr().err


def test_a_plugins_policy_option_is_a_server_request_field(example_plugin):
    from arbitrage.engine import EngineConfig
    from arbitrage.factory import ModelOptions, build_models
    from arbitrage.server.app import create_app
    from arbitrage.server.running import serving
    from arbitrage.server.service import Service

    models = build_models({"draft", "target"}, {"draft": "echo:d", "target": "echo:t"}, ModelOptions())
    service = Service(models, make_policy("draft"), EngineConfig(max_steps=5))
    with serving(create_app(service)) as s:

        def ask(**extra):
            return httpx.post(
                s.url + "/v1/completions",
                json={"model": "arbitrage", "prompt": "Q?\n\n", "policy": "every-nth", **extra},
            )

        ok = ask(every=1)
        assert ok.status_code == 200 and ok.json()["usage"]["escalated_steps"] == 3
        assert ask(every=2).json()["usage"]["escalated_steps"] == 1
        bad = ask(every=0)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "every"
        assert "--" not in bad.json()["error"]["message"]
