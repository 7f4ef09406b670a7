"""Dataset loading: built-in sets, user JSON-lines files, hub datasets (faked), errors, prompt templates."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from arbitrage import data
from arbitrage.data import BUILTIN, load_problems
from arbitrage.errors import ConfigError, DataError
from arbitrage.prompts import INSTRUCTION, format_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
SHIPPED = {"math500": 500, "gsm8k": 1319, "svamp": 1000}
NOT_SHIPPED = ("aime24", "olympiadbench", "asdiv", "mawps", "college_math")


@pytest.fixture(autouse=True)
def _a_users_machine(monkeypatch, tmp_path):
    """A user's machine: no $ARBITRAGE_DATA_DIR, run from an unrelated folder, no hub."""
    monkeypatch.delenv("ARBITRAGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails: no hub unless a test fakes it


@pytest.fixture
def data_dir(monkeypatch):
    """The tests' own made-up records of the sets that are not shipped, as a user's $ARBITRAGE_DATA_DIR."""
    monkeypatch.setenv("ARBITRAGE_DATA_DIR", str(FIXTURES))
    return FIXTURES


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- built-in sets


def test_every_builtin_set_says_where_it_comes_from():
    assert set(data.ORIGINS) == set(BUILTIN)
    assert {n for n, o in data.ORIGINS.items() if o.shipped} == set(SHIPPED)
    for name in SHIPPED:
        assert (data.BUNDLED_DIR / f"{name}.jsonl.gz").is_file()
        assert "MIT" in data.ORIGINS[name].licence


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sets_load_with_nothing_beside_the_package(name):
    problems = load_problems(name)
    assert len(problems) == SHIPPED[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question and p.gold and isinstance(p.gold, str) for p in problems)
    p = problems[0]
    assert p.prompt.startswith("<|im_start|>system\n" + INSTRUCTION) and p.question in p.prompt
    assert p.meta["source"] == name and p.meta["line"] == 1


def test_shipped_fields_and_golds():
    gsm = load_problems("gsm8k", limit=2)
    assert [p.gold for p in gsm] == ["18", "3"] and gsm[0].id == "0"
    assert "####" not in gsm[0].gold
    sv = load_problems("svamp", limit=1)[0]
    assert (sv.id, sv.gold) == ("chal-777", "145")
    assert sv.question.endswith("organized into 93 groups. How big is each group of bananas?")
    m5 = load_problems("math500", limit=1)[0]
    assert m5.id == "test/precalculus/807.json" and m5.gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert m5.meta["level"] == 2 and "solution" not in m5.meta


@pytest.mark.parametrize("name", NOT_SHIPPED)
def test_sets_not_shipped_load_from_the_users_folder(name, data_dir):
    problems = load_problems(name)
    assert problems and all(p.question and p.gold for p in problems)
    assert problems[0].meta["source"] == name


def test_layouts_of_the_sets_not_shipped(data_dir):
    assert load_problems("asdiv", limit=1)[0].gold == "9"  # "9 (apples)"
    assert (
        load_problems("asdiv", limit=1)[0].question
        == "Ann had 5 apples and found 4 more. How many apples does she have?"
    )
    assert load_problems("mawps", limit=1)[0].gold == "43"  # 43.0
    ob = load_problems("olympiadbench")
    assert ob[0].gold == "11" and ob[1].gold == "(2,3,5), (2,5,3)"  # list gold, $ stripped
    cm = load_problems("college_math")
    assert [p.id for p in cm] == ["1", "2"] and cm[0].gold == "10-4 n"  # line numbers: question_number repeats
    assert [p.id for p in load_problems("aime24")] == ["60", "61", "62"]


@pytest.mark.parametrize("name", NOT_SHIPPED)
def test_a_set_not_shipped_and_not_found_says_what_to_do(name):
    with pytest.raises(DataError) as err:
        load_problems(name)
    msg = str(err.value)
    assert "\n" not in msg and "shared" not in msg  # users have no such folder: the message names theirs
    for words in ("ARBITRAGE_DATA_DIR", f"{name}/test.jsonl", "--data"):
        assert words in msg, (words, msg)
    if data.ORIGINS[name].hub:
        assert "arbitrage[hub]" in msg  # the hub route needs the datasets library
    else:
        assert "licence" in msg


def test_limit_and_offset(data_dir):
    full = load_problems("math500")
    part = load_problems("math500", limit=5, offset=10)
    assert [p.id for p in part] == [p.id for p in full[10:15]]
    assert [p.id for p in load_problems("aime24", offset=1)] == ["61", "62"]
    assert load_problems("aime24", limit=0) == []
    assert load_problems("aime24", offset=100) == []
    with pytest.raises(ConfigError):
        load_problems("aime24", offset=-1)


def test_resolution_order(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "gsm8k").mkdir(parents=True)
    write_jsonl(mine / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "so\n#### 2", "idx": 7}])
    assert [p.id for p in load_problems("gsm8k", data_dir=mine)] == ["7"]
    monkeypatch.setenv("ARBITRAGE_DATA_DIR", str(mine))
    assert len(load_problems("gsm8k")) == 1  # the user's folder comes before the shipped copy
    monkeypatch.delenv("ARBITRAGE_DATA_DIR")
    assert len(load_problems("gsm8k")) == 1319
    with pytest.raises(DataError, match="built-in dataset 'aime24' .* not found in .*mine"):
        load_problems("aime24", data_dir=mine)  # an explicit data_dir is the only place looked


def test_sets_not_shipped_come_from_the_hub_with_their_columns_mapped(monkeypatch):
    calls = []
    rows = {
        "HuggingFaceH4/aime_2024": [{"id": 60, "problem": "P1", "answer": "204", "url": "u"}],
        "EleutherAI/asdiv": [
            {"body": "B1", "question": "Q1?", "answer": "9 (apples)"},
            {"body": "B2", "question": "Q2?", "answer": "3 (cats); 4 (dogs)"},
            {"body": "B3.", "question": "Q3?", "answer": "5"},
        ],
        "Hothan/OlympiadBench": [{"id": 7, "question": "Q", "final_answer": ["$\\frac{1}{2}$"]}],
    }

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name not in rows:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")
        return rows[name]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    aime = load_problems("aime24")
    assert calls[-1] == ("HuggingFaceH4/aime_2024", None, "train") and [(p.id, p.gold) for p in aime] == [("60", "204")]
    asdiv = load_problems("asdiv")
    assert calls[-1] == ("EleutherAI/asdiv", "asdiv", "validation")
    assert [(p.id, p.gold, p.question) for p in asdiv] == [("1", "9", "B1. Q1?"), ("2", "5", "B3. Q3?")]  # ';' left out
    ob = load_problems("olympiadbench")
    assert calls[-1] == ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train") and ob[0].gold == "\\frac{1}{2}"
    rows.clear()  # offline, not cached
    with pytest.raises(DataError) as err:
        load_problems("aime24")
    msg = str(err.value)
    assert "Couldn't reach" in msg and "ARBITRAGE_DATA_DIR/aime24/test.jsonl" in msg and "\n" not in msg


# ---------------------------------------------------------------- user files


def test_user_jsonl_custom_fields(tmp_path):
    f = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"qid": "a", "prob": "What is $\\frac{1}{2}+\\frac{1}{2}$?", "sol": 1, "level": "easy", "long": "x" * 500},
            "",
            {"qid": "b", "prob": "Name {x}.", "sol": ["$2$", "$3$"]},
        ],
    )
    ps = load_problems(f, question_field="prob", answer_field="sol", id_field="qid")
    assert [(p.id, p.gold) for p in ps] == [("a", "1"), ("b", "2, 3")]
    assert ps[0].meta == {"level": "easy", "source": str(f), "line": 1}
    assert ps[1].meta["line"] == 3  # blank lines are skipped but keep the numbering
    assert "Name {x}." in ps[1].prompt
    default_ids = load_problems(str(f), question_field="prob", answer_field="sol")
    assert [p.id for p in default_ids] == ["1", "3"]  # line numbers


def test_user_jsonl_guesses_usual_fields_and_joins(tmp_path):
    f = write_jsonl(tmp_path / "q.jsonl", [{"problem": "2+2?", "final_answer": "4", "a": "Ann has 2", "b": "How?"}])
    p = load_problems(f, template="plain")[0]
    assert (p.question, p.gold, p.id) == ("2+2?", "4", "1")
    assert load_problems(f, question_field="a+b")[0].question == "Ann has 2. How?"


@pytest.mark.parametrize(
    "rows, kwargs, pieces",
    [
        (
            [{"question": "a", "answer": 1}, {"question": "b", "answer": 2}, '{"question": "c", "answer": '],
            {},
            ["line 3", "invalid JSON"],
        ),
        (
            [{"prob": "a", "sol": 1}, {"sol": 2, "other": 0}],
            {"question_field": "prob", "answer_field": "sol"},
            ["line 2", "missing question field 'prob'", "fields on this line: sol, other"],
        ),
        (
            [{"question": "a", "answer": 1}, {"question": "b", "ans": 2}],
            {"answer_field": "answer"},
            ["line 2", "missing answer field 'answer'", "fields on this line: question, ans"],
        ),
        ([{"text": "a", "answer": 1}], {}, ["line 1", "no question field", "fields on this line: text, answer"]),
        (
            [
                {"question": "a", "answer": 1, "k": 5},
                {"question": "b", "answer": 2, "k": 6},
                {"question": "c", "answer": 3, "k": 5},
            ],
            {"id_field": "k"},
            ["line 3", "duplicate id '5'", "'k'", "first on line 1"],
        ),
        (
            [{"question": "a", "answer": 1}, {"question": "b", "answer": 2}],
            {"id_field": "uid"},
            ["line 1", "missing id field 'uid'"],
        ),
        ([{"question": "a", "answer": None}], {}, ["line 1", "answer field 'answer' is null"]),
        ([{"question": "  ", "answer": 1}], {}, ["line 1", "question field 'question' is empty"]),
        (['["not", "an", "object"]', {"question": "b", "answer": 2}], {}, ["line 1", "expected a JSON object"]),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, rows, kwargs, pieces):
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_problems(f, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg
    for piece in pieces:
        assert piece in msg


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        load_problems(empty)
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_problems(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- hub datasets (no network here: faked)


def test_hub_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"pip install 'arbitrage\[hub\]'"):
        load_problems("hf:HuggingFaceH4/MATH-500")


def test_hub_with_fake_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "nobody/missing":
            raise FileNotFoundError("Dataset 'nobody/missing' doesn't exist on the Hub\nmore text")
        return [{"question": "Q1", "answer": "A\n#### 1,000"}, {"question": "Q2", "answer": "B\n#### 2"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    ps = load_problems("hf:openai/gsm8k")
    assert calls[-1] == ("openai/gsm8k", "main", "test")
    assert [(p.id, p.gold) for p in ps] == [("1", "1000"), ("2", "2")]  # gsm8k layout, row numbers as ids
    load_problems("hf:someone/set:cfg:train", limit=1)
    assert calls[-1] == ("someone/set", "cfg", "train")
    with pytest.raises(
        DataError,
        match=r"hf:nobody/missing: could not load nobody/missing \(test\) from the "
        r"Hugging Face hub: Dataset 'nobody",
    ):
        load_problems("hf:nobody/missing")


# ---------------------------------------------------------------- prompt templates


def _tiny_tokenizer(chat_template):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "two": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    out.chat_template = chat_template
    return out


def test_templates():
    q = r"What is $\frac{1}{2}$ of {x}?"
    assert format_prompt(q) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\n" + q + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        format_prompt(q, "plain") == q + "\nPlease reason step by step, and put your final answer within \\boxed{}.\n\n"
    )
    assert format_prompt(q, "Q: {question}\nA: \\boxed{}") == "Q: " + q + "\nA: \\boxed{}"


def test_template_from_file_and_errors(tmp_path, data_dir):
    t = tmp_path / "t.txt"
    t.write_text("Problem: {question}\nSolution:")
    p = load_problems("aime24", limit=1, template=f"@{t}")[0]
    assert p.prompt == f"Problem: {p.question}\nSolution:"
    with pytest.raises(ConfigError, match="unknown prompt template"):
        load_problems("aime24", template="qwen")
    with pytest.raises(ConfigError, match="missing.txt"):
        format_prompt("q", f"@{tmp_path / 'missing.txt'}")


def test_chat_template():
    tok = _tiny_tokenizer(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ps = load_problems("gsm8k", limit=2, template="chat", tokenizer=tok)
    assert ps[0].prompt == f"<system>{INSTRUCTION}</system>\n<user>{ps[0].question}</user>\n<assistant>"


def test_chat_template_without_system_role():
    tok = _tiny_tokenizer(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    assert format_prompt("2+2?", "chat", tok) == f"[user] 2+2?\n{INSTRUCTION}\n[assistant] "


def test_chat_template_needs_a_tokenizer_with_one(data_dir):
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        load_problems("aime24", limit=1, template="chat")
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        format_prompt("q", "chat", _tiny_tokenizer(None))
