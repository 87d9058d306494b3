"""A corpus of malformed inputs, one case each: rows, data files, recipes, chat templates, precomputed reference files,
generation items and judge outputs. Every case asserts the exact kind of error and what it names (the file or dataset,
the row or line, the field), and that it comes before any model is loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, load_script
from datasets import Dataset
from helpers.rows import A, S, T, U, normalize

from chatalign.configs import ConfigError
from chatalign.data.schemas import DataValidationError
from chatalign.data.sources import MissingSplitError


def row_error(rows, schema, adapter=None, name="data/x.json"):
    def run(tmp_path):
        normalize(rows, schema, adapter=adapter, name=name)
    return run


GOOD = [U("hi"), A("hello")]
PAIR = {"prompt": [U("hi")], "chosen": [A("yes")], "rejected": [A("no")]}

ROWS = [
    ("sft missing column", row_error([{"conversation": GOOD}], "sft", "sft"), DataValidationError,
     [r"dataset 'data/x.json'", r"missing column 'messages' required by format 'sft' \(columns present: "
                                r"conversation\)"]),
    ("format not detectable", row_error([{"conversation": GOOD}], "sft"), DataValidationError,
     [r"dataset 'data/x.json': cannot detect the dataset format as 'sft' rows from columns \[conversation\]"]),
    ("unknown role", row_error([{"messages": [U("hi"), {"role": "bot", "content": "x"}]}], "sft"),
     DataValidationError, [r"row 0, field 'messages\[1\].role'", r"unknown role 'bot'"]),
    ("empty content", row_error([{"messages": [U("hi"), A("")]}], "sft"), DataValidationError,
     [r"field 'messages\[1\].content'", "content is empty"]),
    ("whitespace content", row_error([{"messages": [U("  \n"), A("x")]}], "sft"), DataValidationError,
     [r"field 'messages\[0\].content'", "content is whitespace-only"]),
    ("content not a string", row_error([{"messages": [{"role": "user", "content": ["hi"]},
                                                      {"role": "assistant", "content": ["yo"]}]}], "sft"),
     DataValidationError, [r"row 0, field 'messages\[0\].content'", "content must be a string, got list"]),
    ("system not first", row_error([{"messages": [U("hi"), S("sys"), A("x")]}], "sft"), DataValidationError,
     [r"messages\[1\].role", "system message only allowed at index 0, found at 1"]),
    ("assistant first", row_error([{"messages": [A("x"), U("hi"), A("y")]}], "sft"), DataValidationError,
     [r"messages\[0\].role", "first non-system message must be 'user', got 'assistant'"]),
    ("two user turns", row_error([{"messages": [U("a"), U("b"), A("c")]}], "sft"), DataValidationError,
     [r"messages\[1\].role", "'user' message cannot follow 'user'"]),
    ("sft ending with the user", row_error([{"messages": [U("a"), A("b"), U("c")]}], "sft"), DataValidationError,
     [r"messages\[2\].role", "must end with 'assistant', got 'user'"]),
    ("tool after user", row_error([{"messages": [U("a"), T("out"), A("b")]}], "sft"), DataValidationError,
     [r"messages\[1\].role", "'tool' message cannot follow 'user'"]),
    ("identical pair", row_error([{**PAIR, "rejected": [A("yes")]}], "preference"), DataValidationError,
     [r"field 'rejected\[0\].content'", "chosen and rejected are identical"]),
    ("two chosen messages", row_error([{**PAIR, "chosen": [A("a"), A("b")]}], "preference"), DataValidationError,
     [r"field 'chosen'", "expected exactly one assistant message, got 2 messages"]),
    ("prompt ending with the assistant", row_error([{**PAIR, "prompt": [U("a"), A("b")]}], "preference"),
     DataValidationError, [r"prompt\[1\].role", "must end with 'user' or 'tool'"]),
    ("label 2", row_error([{"prompt": [U("a")], "completion": [A("b")], "label": 2}], "unpaired"),
     DataValidationError, [r"field 'label'", r"label must be a bool \(or 0/1\), got 2"]),
    ("label 'true'", row_error([{"prompt": [U("a")], "completion": [A("b")], "label": "true"}], "unpaired"),
     DataValidationError, [r"field 'label'", "got 'true'"]),
    ("implicit prompt mismatch", row_error([{"chosen": [U("a"), A("x")], "rejected": [U("b"), A("y")]}],
                                           "preference"),
     DataValidationError, [r"field 'rejected\[0\]'", "differ at message 0, before the final assistant turn"]),
    ("tools not JSON", row_error([{"messages": GOOD, "tools": "{not json"}], "sft"), DataValidationError,
     [r"field 'tools'", "tools is not valid JSON"]),
    ("score not a number", row_error([{**PAIR, "score_chosen": "high"}], "preference"), DataValidationError,
     [r"field 'score_chosen'", "score_chosen must be a number, got str"]),
    ("row index across batches", row_error([{"messages": GOOD}] * 1200 + [{"messages": [U("a")]}], "sft"),
     DataValidationError, [r"row 1200, field 'messages\[0\].role'"]),
    ("sharegpt unknown speaker",
     row_error([{"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}], "sft",
               "sharegpt"),
     DataValidationError, [r"field 'conversations\[0\].from'", "unknown sharegpt role 'robot'"]),
    ("alpaca without output", row_error([{"instruction": "do", "input": "", "output": None}], "sft", "alpaca"),
     DataValidationError, [r"row 0, field 'output': value is missing"]),
    ("error found after a conversion", row_error([{"prompt": "q", "completion": [{"role": "user", "content": "x"}]}],
                                                 "sft"),
     DataValidationError, [r"field 'messages\[1\].role'", "after converting with format 'prompt_completion'"]),
]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def mix(spec_of, **kwargs):
    def run(tmp_path):
        from chatalign.data.mixer import mix_datasets

        mix_datasets(spec_of(tmp_path), "sft", splits=kwargs.pop("splits", ["train"]), **kwargs)
    return run


LINE = json.dumps({"messages": GOOD})
FILES = [
    ("jsonl bad line", mix(lambda d: {write(d, "a.jsonl", f'{LINE}\n{{"messages": [}}\n{LINE}\n'): 1.0}),
     ValueError, [r"a.jsonl': file .*a.jsonl line 2 is not valid JSON"]),
    ("jsonl torn last line", mix(lambda d: {write(d, "b.jsonl", f'{LINE}\n{LINE[:25]}'): 1.0}), ValueError,
     [r"line 2 is not valid JSON \(a torn last line\?\)"]),
    # U+2028 inside a JSON string is no line break of JSONL: the bad line is still line 3
    ("jsonl bad line after a U+2028", mix(lambda d: {write(d, "u.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "a\u2028b"}, GOOD[1]]}, ensure_ascii=False)
        + f'\n{LINE}\n{{"messages": [}}\n'): 1.0}), ValueError, [r"u.jsonl line 3 is not valid JSON"]),
    ("json list syntax", mix(lambda d: {write(d, "c.json", f'[{LINE},\n{LINE}\n{LINE}]'): 1.0}), ValueError,
     [r"c.json line 3 is not valid JSON"]),
    ("jsonl line not an object", mix(lambda d: {write(d, "d.jsonl", f'{LINE}\n[1, 2]\n'): 1.0}), ValueError,
     [r"d.jsonl line 2: expected a JSON object \(one row\), got list"]),
    ("missing file", mix(lambda d: {str(d / "nope.jsonl"): 1.0}), FileNotFoundError,
     [r"dataset '.*nope.jsonl': no such file or folder"]),
    ("missing dir/name under an existing folder",
     mix(lambda d: (d / "local").mkdir() or {"local/ultrafeedback": 1.0}), FileNotFoundError,
     [r"dataset 'local/ultrafeedback': no such file or folder"]),  # a local folder, not a hub organisation
    ("unsupported file type", mix(lambda d: {write(d, "e.txt", "hello"): 1.0}), ValueError,
     [r"unsupported file type '.txt'"]),
    ("folder without data files", mix(lambda d: (d / "empty").mkdir() or {str(d / "empty"): 1.0}), ValueError,
     [r"folder holds no data files"]),
    ("missing split", mix(lambda d: {write(d, "f/train.jsonl", LINE + "\n").rsplit("/", 1)[0]: 1.0},
                          splits=["train", "test"]), MissingSplitError,
     [r"has no split 'test' \(available: train\)", "set test_split_size"]),
    ("every weight 0", mix(lambda d: {write(d, "g.jsonl", LINE + "\n"): 0}), ValueError,
     [r"dataset_mixer draws no row from any source \('.*g.jsonl': 0\)"]),
    ("unknown mixer key", mix(lambda d: {write(d, "h.jsonl", LINE + "\n"): {"frac": 0.5}}), ValueError,
     [r"unknown key\(s\) \['frac'\] in mixer spec"]),
    ("size over what is there", mix(lambda d: {write(d, "i.jsonl", LINE + "\n"): {"size": 5}}), ValueError,
     [r"size 5 exceeds the 1 rows available"]),
    ("dataset_splits misses a source", mix(lambda d: {write(d, "j.jsonl", LINE + "\n"): 1.0},
                                           splits={"other": ["train"]}),
     ValueError, [r"dataset_splits names 'other', which is not a dataset_mixer source"]),
]


def sft_main(recipe_text: str, *extra: str, model: str | None = "tiny"):
    def run(tmp_path):
        recipe = write(tmp_path, "recipe.yaml", recipe_text.format(model=tmp_path / "model", data=REPO / "data"))
        (tmp_path / "model").mkdir(exist_ok=True)
        load_script("run_sft").main([recipe, "--use_cpu=true", "--bf16=false", f"--output_dir={tmp_path / 'out'}",
                                     *extra])
    return run


RECIPE = "model_name_or_path: {model}\ndataset_mixer: {{{data}/llama_factory_demo/alpaca_en_demo.json: 0.1}}\n"
RECIPES = [
    ("empty recipe", sft_main("# only a comment\n"), ConfigError, [r"recipe file '.*recipe.yaml' is empty"]),
    ("recipe is a list", sft_main("- a\n- b\n"), ConfigError, [r"recipe.yaml' must hold a mapping of keys to values"]),
    ("invalid YAML", sft_main("model_name_or_path: [unclosed\n"), ConfigError, [r"recipe.yaml' is not valid YAML"]),
    ("unknown key", sft_main(RECIPE + "learning_rat: 1e-5\n"), ConfigError,
     [r"unknown key 'learning_rat' in '.*recipe.yaml'; did you mean learning_rate"]),
    ("wrong type", sft_main(RECIPE, "--max_steps=many"), ConfigError,
     [r"key 'max_steps' in the command line: expected int, got 'many'"]),
    ("missing recipe file", lambda tmp_path: load_script("run_sft").main([str(tmp_path / "none.yaml")]), ConfigError,
     [r"recipe file '.*none.yaml' does not exist"]),
    ("no model", sft_main("dataset_mixer: {{a.jsonl: 1.0}}\n"), ConfigError, [r"the recipe names no model"]),
    ("model path missing", sft_main(RECIPE, "--model_name_or_path=./checkpoints/none"), ConfigError,
     [r"model_name_or_path './checkpoints/none': no such checkpoint folder"]),
    ("no mixer", sft_main("model_name_or_path: {model}\n"), ConfigError, [r"the recipe has no dataset_mixer"]),
    ("choices enforced", sft_main(RECIPE, "--overflow=wrap"), ConfigError,
     [r"key 'overflow' in the command line: expected one of 'truncate', 'drop', got 'wrap'"]),
    ("TRL key run_sft ignores", sft_main(RECIPE + "dataset_text_field: text\n"), ConfigError,
     [r"key 'dataset_text_field' in '.*recipe.yaml': TRL's dataset_text_field has no effect in run_sft"]),
    ("preference_config outside LION's bins",
     lambda tmp_path: load_script("run_dpo").main([sft_recipe(tmp_path), "--preference_config={12: 1.0}",
                                                   "--max_data_size=10"]),
     ConfigError, [r"preference_config key 12: quota sampling has the bins 0..9"]),
]


def sft_recipe(tmp_path):
    (tmp_path / "model").mkdir(exist_ok=True)
    return write(tmp_path, "dpo.yaml", RECIPE.format(model=tmp_path / "model", data=REPO / "data")
                 + f"use_cpu: true\nbf16: false\noutput_dir: {tmp_path / 'out'}\n")


def template(spec_of):
    def run(tmp_path):
        from chatalign.data.templates import resolve_chat_template

        resolve_chat_template(spec_of(tmp_path))
    return run


TEMPLATES = [
    ("jinja syntax error", template(lambda d: write(d, "t.jinja", "{% for m in messages %}\n{{ m['content'] }\n")),
     ValueError, [r"chat template file '.*t.jinja', line 2: unexpected '}'"]),
    ("unclosed block in a string", template(lambda d: "{% if messages %}{{ messages[0]['content'] }}"), ValueError,
     [r"chat template given as a string, line 1: Unexpected end of template"]),
    ("unknown template name", template(lambda d: "chatmll"), ValueError,
     [r"unknown chat template 'chatmll'. Did you mean 'chatml'"]),
    ("missing template file", template(lambda d: str(d / "none.jinja")), FileNotFoundError,
     [r"chat template file '.*none.jinja' does not exist"]),
    ("SGLang template without user", template(lambda d: write(d, "s.json", json.dumps(
        {"name": "x", "system": "S", "assistant": "A", "sep_style": "CHATML"}))), ValueError,
     [r"chat template file '.*s.json': missing field 'user'"]),
    ("SGLang unknown separator style", template(lambda d: write(d, "u.json", json.dumps(
        {"name": "x", "system": "S", "user": "U", "assistant": "A", "sep_style": "FANCY"}))), ValueError,
     [r"u.json', field 'sep_style': unsupported separator style 'FANCY'"]),
    ("chat_template.json not a string", template(lambda d: write(d, "v.json", json.dumps({"chat_template": 3}))),
     ValueError, [r"v.json', field 'chat_template': expected a string"]),
]


def precompute(case):
    def run(tmp_path):
        from chatalign.train.dpo import reference

        path = tmp_path / "ref.parquet"
        data = reference.RefLogps({"k1": (-1.0, -2.0)}, set(), {})
        reference.write_ref_logps_file(path, data, {"model": "/m", "max_length": 512})
        case(reference, path, tmp_path)
    return run


def not_a_ref_file(reference, path, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"key": ["k1"]}), other)
    reference.read_ref_logps_file(other)


PRECOMPUTE = [
    ("not a reference file", precompute(not_a_ref_file), ValueError,
     [r"precomputed file .*other.parquet: not a chatalign-ref-logps/1 file"]),
    ("a dependency differs", precompute(lambda r, path, d: r.open_ref_logps_file(
        path, {"model": "/m", "max_length": 1024})), ValueError,
     [r"precomputed file .*ref.parquet: precomputed with max_length=512, this run uses 1024"]),
    ("a row has no entry", precompute(lambda r, path, d: r.attach_ref_logps(
        Dataset.from_list([{**PAIR, "prompt_id": "p7"}]), r.read_ref_logps_file(path), path)), ValueError,
     [r"ref.parquet: row 0 of the training data \(prompt_id 'p7'\) has no entry"]),
    ("file missing", precompute(lambda r, path, d: r.open_ref_logps_file(d / "none.parquet", {})),
     FileNotFoundError, [r"precomputed file .*none.parquet does not exist: write it with "
                         r"scripts/precompute_ref_logprobs.py"]),
]


def items(rows):
    def run(tmp_path):
        from chatalign.generation.params import check_items

        check_items(rows, "prompts.jsonl")
    return run


GENERATION = [
    ("item without id", items([{"messages": [U("a")]}]), ValueError, [r"prompts.jsonl row 0: no 'id'"]),
    ("duplicate id", items([{"id": 1, "messages": [U("a")]}, {"id": "1", "messages": [U("b")]}]), ValueError,
     [r"prompts.jsonl row 1: duplicate id '1'"]),
    ("item ending with the assistant", items([{"id": "a", "messages": [U("a"), A("b")]}]), ValueError,
     [r"prompts.jsonl row 0 \(id 'a'\), field 'messages': must be a list of messages ending with a user turn"]),
    ("prompt not a list", items([{"id": "b", "prompt": {"role": "user"}}]), ValueError,
     [r"row 0 \(id 'b'\), field 'prompt'"]),
]


def judge_spec(spec):
    def run(tmp_path):
        from chatalign.judges.loading import load_judge

        load_judge(spec)
    return run


def llm_answers(answers):
    def run(tmp_path):
        from chatalign.judges.models import LLMJudge

        LLMJudge(lambda conversations: answers, "stub").score_batch([([U("q")], "a"), ([U("q")], "b")])
    return run


JUDGES = [
    ("empty judge spec", judge_spec(""), ValueError, [r"judge spec is empty; expected one of reward_model:<...>"]),
    ("unknown judge kind", judge_spec("classifier:x"), ValueError,
     [r"judge spec 'classifier:x': expected reward_model:<path>, pairrm:<path> or llm:"]),
    ("reward model folder missing", judge_spec("reward_model:/no/such/rm"), FileNotFoundError,
     [r"judge 'reward_model:/no/such/rm': no such checkpoint folder"]),
    ("judge answers fewer requests", llm_answers(["Rating: [[5]]"]), RuntimeError,
     [r"LLM judge llm:stub.*: 1 answers for 2 requests"]),
]

CASES = ROWS + FILES + RECIPES + TEMPLATES + PRECOMPUTE + GENERATION + JUDGES


def test_the_corpus_covers_every_kind_of_input():
    assert len(CASES) >= 40
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, case, error, names", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_fails_clearly(name, case, error, names, tmp_path, monkeypatch):
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_model)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        case(tmp_path)
    for pattern in names:
        assert re.search(pattern, str(info.value)), f"{pattern!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("answer, kind", [("Rating: [[11]]", "score"), ("Rating: [[0]]", "score"),
                                          ("I like it.", "score"), ("", "score"), ("A is better.", "compare"),
                                          ("[[D]]", "compare"), (None, "compare")])
def test_an_unparseable_judge_output_is_none_never_a_guess(answer, kind):
    from chatalign.judges.prompts import VERDICT_VALUES, parse_rating, parse_verdict

    parsed = parse_rating(answer) if kind == "score" else parse_verdict(answer)
    assert parsed is None or (kind == "compare" and VERDICT_VALUES.get(parsed) is None)
