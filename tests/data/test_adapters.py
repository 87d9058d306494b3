"""chatalign.data.adapters: the built-in formats on hand-written Hub-layout rows and the shipped real rows, and their
helpers."""

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset
from helpers.rows import A, S, T, U, error_of, normalize

from chatalign.data.adapters.canonical import split_shared_prompt
from chatalign.data.adapters.math_code import answers_match, split_code_outputs
from chatalign.data.adapters.oasst import oasst_trees_to_conversations
from chatalign.data.normalize import normalize_dataset, unpaired_to_sft
from chatalign.data.registry import detect_format, get_adapter
from chatalign.data.schemas import DataValidationError, InvalidRow, RowProblem

DATA = Path(__file__).resolve().parents[2] / "data"


LF = "llama_factory_demo"


TORA = "tora_math_code"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Load a shipped file the way users do (datasets' json builder), cached per module."""
    cache_dir = tmp_path_factory.mktemp("hf_cache")
    loaded = {}

    def load(relative):
        if relative not in loaded:
            loaded[relative] = load_dataset(
                "json", data_files=str(DATA / relative), split="train", cache_dir=str(cache_dir)
            )
        return loaded[relative]

    return load


def raw_rows(relative):
    path = DATA / relative
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def test_trl_standard_strings_are_wrapped():
    out, _ = normalize([{"prompt": "The sky is", "chosen": "blue.", "rejected": "green."}], "preference")
    assert out[0] == {"prompt": [U("The sky is")], "chosen": [A("blue.")], "rejected": [A("green.")]}
    out, _ = normalize(
        [{"prompt": "Hi", "completion": "Hello", "label": 1}, {"prompt": "Hi", "completion": "Go", "label": 0}],
        "unpaired",
    )
    assert out.to_list() == [
        {"prompt": [U("Hi")], "completion": [A("Hello")], "label": True},
        {"prompt": [U("Hi")], "completion": [A("Go")], "label": False},
    ]
    out, _ = normalize([{"prompt": "Hi", "prompt_id": "p1", "reference": "Hello"}], "prompt")
    assert out[0] == {"prompt": [U("Hi")], "prompt_id": "p1", "reference": "Hello"}
    out, _ = normalize([{"prompt": [U("Hi")], "completion": [A("Hello")]}], "sft")
    assert out[0] == {"messages": [U("Hi"), A("Hello")]}


def test_unpaired_label_other_ints_are_errors():
    error = error_of([{"prompt": "Hi", "completion": "Hello", "label": 2}], "unpaired", name="kto.jsonl")
    assert str(error) == "dataset 'kto.jsonl' row 0, field 'label': label must be a bool (or 0/1), got 2"


def test_preference_implicit_prompt():
    rows = [{"chosen": [S("s"), U("q"), A("good")], "rejected": [S("s"), U("q"), A("bad")]}]
    out, _ = normalize(rows, "preference")
    assert out[0] == {"prompt": [S("s"), U("q")], "chosen": [A("good")], "rejected": [A("bad")]}


ULTRACHAT_ROWS = [
    {
        "prompt": "How do I boil an egg?",
        "prompt_id": "5d2c0b8e",
        "messages": [
            U("How do I boil an egg?"),
            A("Put it in boiling water for 9 minutes."),
            U("And soft-boiled?"),
            A("About 6 minutes."),
        ],
    },
    {
        "prompt": "Name a prime.",
        "prompt_id": "a17f",
        "messages": [U("Name a prime."), A("7")],
    },
]


ULTRAFEEDBACK_ROWS = [
    {
        "prompt": "What is 2+2?",
        "prompt_id": "c0ffee",
        "chosen": [U("What is 2+2?"), A("4")],
        "rejected": [U("What is 2+2?"), A("5")],
        "messages": [U("What is 2+2?"), A("4")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    },
    {
        "prompt": "Say hi",
        "prompt_id": "beef",
        "chosen": [U("Say hi"), A("Hi!")],
        "rejected": [U("Say hello"), A("Hello!")],
        "messages": [U("Say hi"), A("Hi!")],
        "score_chosen": 7.0,
        "score_rejected": 7.0,
    },
    {
        "prompt": "Tie",
        "prompt_id": "tie",
        "chosen": [U("Tie"), A("Same")],
        "rejected": [U("Tie"), A("Same")],
        "messages": [U("Tie"), A("Same")],
        "score_chosen": 5.0,
        "score_rejected": 5.0,
    },
]


def test_ultrachat_to_sft_and_prompt():
    ds = Dataset.from_list(ULTRACHAT_ROWS)
    assert detect_format(ds.column_names) == "ultrachat"
    assert detect_format(ds.column_names, schema="prompt") == "ultrachat_prompt"
    sft, counts = normalize_dataset(ds, "HuggingFaceH4/ultrachat_200k", "sft")
    assert sft.column_names == ["messages", "prompt_id"]
    assert sft.to_list() == [
        {"messages": ULTRACHAT_ROWS[0]["messages"], "prompt_id": "5d2c0b8e"},
        {"messages": [U("Name a prime."), A("7")], "prompt_id": "a17f"},
    ]
    prompts, _ = normalize_dataset(ds, "HuggingFaceH4/ultrachat_200k", "prompt")
    assert prompts.to_list() == [
        {
            "prompt": [U("How do I boil an egg?")],
            "prompt_id": "5d2c0b8e",
            "reference": "Put it in boiling water for 9 minutes.",
        },
        {"prompt": [U("Name a prime.")], "prompt_id": "a17f", "reference": "7"},
    ]


def test_ultrafeedback_to_preference_splits_the_shared_prompt():
    ds = Dataset.from_list(ULTRAFEEDBACK_ROWS)
    assert detect_format(ds.column_names) == "ultrafeedback"
    with pytest.raises(DataValidationError) as info:
        normalize_dataset(ds, "HuggingFaceH4/ultrafeedback_binarized", "preference")
    assert str(info.value) == (
        "dataset 'HuggingFaceH4/ultrafeedback_binarized' row 1, field 'rejected[0]': chosen and rejected differ at "
        "message 0, before the final assistant turn"
    )
    out, counts = normalize_dataset(ds, "uf", "preference", skip_invalid=True)
    assert counts == Counter({"prefix mismatch": 1, "identical pair": 1})
    assert out.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "prompt_id"]
    assert out.to_list() == [
        {
            "prompt": [U("What is 2+2?")],
            "chosen": [A("4")],
            "rejected": [A("5")],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
            "prompt_id": "c0ffee",
        }
    ]


def test_split_shared_prompt_problems():
    with pytest.raises(InvalidRow) as info:
        split_shared_prompt([U("q"), A("a")], [U("q"), A("a"), U("q2"), A("b")])
    assert info.value.problem == RowProblem(
        "rejected",
        "prefix mismatch",
        "chosen has 2 messages but rejected has 4; they must share every message before the final assistant turn",
    )
    with pytest.raises(InvalidRow) as info:
        split_shared_prompt([U("q"), A("a"), U("more")], [U("q"), A("b")])
    assert info.value.problem == RowProblem(
        "chosen[2].role", "bad completion", "last message must be 'assistant', got 'user'"
    )


def oasst_message(
    message_id, parent_id, role, text, *, rank=None, deleted=False, review_result=True, lang="en", tree="t1"
):
    """One row in the exact OpenAssistant/oasst1 schema (same columns and types as the hub parquet)."""
    return {
        "message_id": message_id,
        "parent_id": parent_id,
        "user_id": "u-" + message_id,
        "created_date": "2023-02-05T14:23:50.983374+00:00",
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": review_result,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": {
            "identity_attack": 0.0001,
            "insult": 0.0003,
            "obscene": 0.0002,
            "severe_toxicity": 0.00003,
            "sexual_explicit": 0.00002,
            "threat": 0.00004,
            "toxicity": 0.0004,
        },
        "message_tree_id": tree,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [2]},
        "labels": {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]},
    }


OASST_ROWS = [
    oasst_message("t1", None, "prompter", "Tell me a joke."),
    oasst_message("a1", "t1", "assistant", "Why did the chicken cross the road?", rank=1.0),
    oasst_message(
        "a2", "t1", "assistant", "I told my wife she drew her eyebrows too high. She looked surprised.", rank=0.0
    ),
    oasst_message("a3", "t1", "assistant", "No.", deleted=True),
    oasst_message("p4", "a1", "prompter", "Why?"),
    oasst_message("p2", "a2", "prompter", "Another one?", rank=0.0),
    oasst_message("p3", "a2", "prompter", "spam spam", review_result=False, rank=1.0),
    oasst_message(
        "a4", "p2", "assistant", "Parallel lines have so much in common. It's a shame they'll never meet.", rank=0.0
    ),
    oasst_message("a5", "p2", "assistant", "Knock knock.", rank=1.0),
    oasst_message("a7", "p2", "assistant", "Unranked late reply."),  # rank None: never preferred over ranked ones
    oasst_message("x1", "a3", "prompter", "Why so short?"),
    oasst_message("t2", None, "prompter", "Wie spät ist es?", lang="de", tree="t2"),
    oasst_message("a6", "t2", "assistant", "Ich habe keine Uhr.", lang="de", tree="t2"),
    oasst_message("t3", None, "prompter", "Anyone there?", tree="t3"),
]


def test_oasst_best_path_per_tree():
    counts = Counter()
    rows = oasst_trees_to_conversations(OASST_ROWS, counts=counts)
    assert rows == [
        {
            "messages": [
                U("Tell me a joke."),
                A("I told my wife she drew her eyebrows too high. She looked surprised."),
                U("Another one?"),
                A("Parallel lines have so much in common. It's a shame they'll never meet."),
            ],
            "prompt_id": "t1",
        },
        {"messages": [U("Wie spät ist es?"), A("Ich habe keine Uhr.")], "prompt_id": "t2"},
    ]
    assert counts == Counter({"deleted": 1, "failed review": 1, "unreachable": 1, "no assistant reply": 1})


def test_oasst_all_paths_and_language_filter():
    counts = Counter()
    rows = oasst_trees_to_conversations(OASST_ROWS, best_only=False, lang="en", counts=counts)
    assert [[m["content"][:12] for m in r["messages"]] for r in rows] == [
        ["Tell me a jo", "Why did the "],  # the prompter leaf "Why?" got no reply and is trimmed
        ["Tell me a jo", "I told my wi", "Another one?", "Parallel lin"],
        ["Tell me a jo", "I told my wi", "Another one?", "Knock knock."],
        ["Tell me a jo", "I told my wi", "Another one?", "Unranked lat"],
    ]
    assert counts == Counter(
        {"deleted": 1, "failed review": 1, "other language": 2, "unreachable": 1, "no assistant reply": 1}
    )


def test_oasst_through_normalize_dataset():
    ds = Dataset.from_list(OASST_ROWS)
    assert detect_format(ds.column_names) == "oasst"
    out, counts = normalize_dataset(ds, "OpenAssistant/oasst1", "sft")
    assert out.column_names == ["messages", "prompt_id"]
    assert [r["prompt_id"] for r in out] == ["t1", "t2"]
    assert counts["deleted"] == 1
    english, counts = normalize_dataset(ds, "oasst1", "sft", options={"lang": "en", "best_only": False})
    assert len(english) == 4 and counts["other language"] == 2
    with pytest.raises(ValueError, match="format 'sft' takes no options"):
        normalize_dataset(Dataset.from_list([{"messages": [U("q"), A("a")]}]), "x", "sft", options={"lang": "en"})
    broken = OASST_ROWS[:3] + [oasst_message("m9", "t1", "moderator", "hm")]
    with pytest.raises(DataValidationError) as info:
        normalize_dataset(Dataset.from_list(broken), "OpenAssistant/oasst1", "sft")
    assert str(info.value) == (
        "dataset 'OpenAssistant/oasst1' row 3, field 'role': unknown role 'moderator' (expected one of prompter, assistant)"
    )
    out, counts = normalize_dataset(Dataset.from_list(broken), "OpenAssistant/oasst1", "sft", skip_invalid=True)
    assert len(out) == 1 and counts == Counter({"unknown role": 1})


def test_oasst_reports_broken_tree_order_at_the_message_row():
    rows = [oasst_message("t1", None, "prompter", "q"), oasst_message("p1", "t1", "prompter", "q again")]
    rows.append(oasst_message("a1", "p1", "assistant", "a"))
    with pytest.raises(DataValidationError) as info:
        oasst_trees_to_conversations(rows, source="oasst2")
    assert str(info.value) == (
        "dataset 'oasst2' row 1, field 'role': 'user' message cannot follow 'user' (expected 'assistant') "
        "(in the OASST message tree)"
    )


def test_alpaca_real_rows(real):
    ds = real(f"{LF}/alpaca_en_demo.json")
    assert detect_format(ds.column_names) == "alpaca"
    out, counts = normalize_dataset(ds, "alpaca_en_demo.json", "sft")
    assert len(out) == 999 and counts == Counter()
    assert out[554] == {"messages": [U("Sum up the numbers.\n\n3, 2, 5"), A("The sum of the numbers is 10.")]}
    assert out[362] == {"messages": [U("Calculate 15% of 500."), A("15% of 500 is 75.")]}
    with_input = sum(1 for r in raw_rows(f"{LF}/alpaca_en_demo.json") if r["input"])
    assert with_input == 412
    assert sum("\n\n" in r["messages"][0]["content"] for r in out) >= with_input
    lf, _ = normalize_dataset(ds, "alpaca_en_demo.json", "sft", adapter="llama_factory_alpaca")
    assert lf[554] == {"messages": [U("Sum up the numbers.\n3, 2, 5"), A("The sum of the numbers is 10.")]}
    assert lf[362] == out[362]


def test_alpaca_system_and_history():
    row = {
        "instruction": "And 3+3?",
        "input": "",
        "output": "6",
        "system": "You are a calculator.",
        "history": [["What is 1+1?", "2"], ["And 2+2?", "4"]],
    }
    out, _ = normalize([row], "sft", adapter="alpaca")
    assert out[0]["messages"] == [
        S("You are a calculator."),
        U("What is 1+1?"),
        A("2"),
        U("And 2+2?"),
        A("4"),
        U("And 3+3?"),
        A("6"),
    ]
    error = error_of([{"instruction": "x", "input": "", "output": None}], "sft", name="a.json")
    assert str(error) == "dataset 'a.json' row 0, field 'output': value is missing"


def test_llama_factory_alpaca_pairwise():
    rows = [{"instruction": "Pick", "input": "a or b", "chosen": "a", "rejected": "b"}]
    assert detect_format(rows[0]) == "llama_factory_alpaca_pairwise"
    out, _ = normalize(rows, "preference")
    assert out[0] == {"prompt": [U("Pick\na or b")], "chosen": [A("a")], "rejected": [A("b")]}


def test_llama_factory_sharegpt_pairwise_real_rows(real):
    ds = real(f"{LF}/dpo_en_demo.json")
    assert detect_format(ds.column_names) == "llama_factory_sharegpt_pairwise"
    out, counts = normalize_dataset(ds, "dpo_en_demo.json", "preference")
    assert len(out) == 300 and counts == Counter()
    assert out[134] == {
        "prompt": [U("Obtain the result by calculating 6778576-84834150134. Only respond with math and no words.")],
        "chosen": [A("6778576 - 84834150134 = -84827371558")],
        "rejected": [A("84834150134 - 6778576 = -16666579378")],
    }
    assert out[43]["prompt"][0] == S(
        "You are an AI assistant. You will be given a task. You must generate a detailed and long answer."
    )
    assert out[43]["chosen"] == [
        A(
            "Abdulah Hasanagic is the proud owner of AS Company in Gorazde, a small town located on the banks of the "
            "Drina River, near the border with Serbia, in Eastern Bosnia."
        )
    ]
    shapes = Counter(tuple(m["role"] for m in r["prompt"]) for r in out)
    assert shapes[("user",)] == 114 and shapes[("system", "user")] == 80
    assert [m["role"] for m in out[172]["prompt"]] == ["user", "assistant", "user", "assistant", "user"]


def test_llama_factory_kto_real_rows(real):
    ds = real(f"{LF}/kto_en_demo.json")
    assert detect_format(ds.column_names) == "llama_factory_kto"
    out, counts = normalize_dataset(ds, "kto_en_demo.json", "unpaired")
    assert len(out) == 300 and counts == Counter()
    assert sum(out["label"]) == 150
    assert out[147] == {
        "prompt": [U("What is the result of 660-549695? Only respond with math and no words.")],
        "completion": [A("660 - 549695 = -549035")],
        "label": True,
    }
    assert out[119] == {
        "prompt": [
            U("Could you work out 2930861750638 plus 52341951985411 for me? Only respond with math and no words.")
        ],
        "completion": [A("71600583078871")],
        "label": False,
    }
    assert sum(len(r["prompt"]) == 1 for r in out) == 223


def test_llama_factory_kto_sharegpt_columns_and_bad_last_turn():
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": True}]
    out, _ = normalize(rows, "unpaired")
    assert out[0] == {"prompt": [U("q")], "completion": [A("a")], "label": True}
    rows = [{"messages": [U("q")], "label": False}]
    assert str(error_of(rows, "unpaired", name="kto.json")) == (
        "dataset 'kto.json' row 0, field 'messages[0]': a KTO conversation must end with an 'assistant' message, "
        "got 'user'"
    )


def test_glaive_toolcall_real_rows(real):
    ds = real(f"{LF}/glaive_toolcall_en_demo.json")
    assert detect_format(ds.column_names) == "sharegpt"
    out, counts = normalize_dataset(ds, "glaive_toolcall_en_demo.json", "sft")
    assert len(out) == 300 and counts == Counter()
    assert out.column_names == ["messages", "tools"]
    assert out[203] == {
        "messages": [
            U("Hi, I was born on 1990-05-15. Can you tell me how old I am today?"),
            A('{"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}'),
            T('{"age": 31}'),
            A("Based on the birthdate you provided, you are 31 years old today."),
        ],
        "tools": '[{"name": "calculate_age", "description": "Calculate the age based on birthdate", "parameters": '
        '{"type": "object", "properties": {"birthdate": {"type": "string", "description": "The birthdate in '
        'YYYY-MM-DD format"}}, "required": ["birthdate"]}}]',
    }
    raw = raw_rows(f"{LF}/glaive_toolcall_en_demo.json")
    with_calls = sum(any(t["from"] == "observation" for t in r["conversations"]) for r in raw)
    assert sum(any(m["role"] == "tool" for m in r["messages"]) for r in out) == with_calls == 153
    assert sum(r["tools"] == "[]" for r in out) == 109  # kept verbatim: "no tools offered"
    assert all(json.loads(r["tools"]) is not None for r in out)
    assert get_adapter("llama_factory_sharegpt").convert is get_adapter("sharegpt").convert


def test_sharegpt_system_column_and_role_aliases():
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "ChatGPT", "value": "call"},
                {"from": "observation", "value": "out"},
                {"from": "bard", "value": "a"},
            ],
            "system": "sys",
            "tools": "",
        }
    ]
    out, _ = normalize(rows, "sft")
    assert out[0] == {"messages": [S("sys"), U("q"), A("call"), T("out"), A("a")], "tools": None}
    rows[0]["conversations"].insert(0, {"from": "system", "value": "inline wins"})
    out, _ = normalize(rows, "sft")
    assert out[0]["messages"][0] == S("inline wins") and len(out[0]["messages"]) == 5


EXAMPLE_3_CODE = (
    "We can substitute $x = -1$ into the function $f(x)$ to find the value of $f(-1)$.\n\n"
    "```python\n"
    "def evaluate_function():\n"
    '    """If $f (x) = x^2 - 1$, what is the value of $f (-1)$?"""\n'
    "    x = -1\n"
    "    f_x = x**2 - 1\n"
    "    return f_x\n"
    "\n"
    "result = evaluate_function()\n"
    "print(result)\n"
    "```"
)


def test_math_code_real_rows(real):
    ds = real(f"{TORA}/examples.jsonl")
    assert detect_format(ds.column_names) == "math_code"
    out, counts = normalize_dataset(ds, "examples.jsonl", "sft")
    assert len(out) == 30 and counts == Counter() and out.column_names == ["messages"]
    assert out[3] == {
        "messages": [
            U("If $f (x) = x^2 - 1$, what is the value of $f (-1)$?"),
            A(EXAMPLE_3_CODE),
            U("```output\n0\n```"),
            A("The value of $f(-1)$ is $\\boxed{0}$."),
        ]
    }
    assert Counter(len(r["messages"]) for r in out) == Counter({4: 25, 2: 5})
    for row in out:
        if len(row["messages"]) == 4:
            code, output = row["messages"][1]["content"], row["messages"][2]["content"]
            assert code.endswith("```") and "```python\n" in code and "```output" not in code
            assert output.startswith("```output\n") and output.endswith("\n```")
    raw = raw_rows(f"{TORA}/examples.jsonl")
    no_code = [i for i, r in enumerate(raw) if "```output" not in r["messages"][1]["content"]]
    assert no_code == [6, 7, 18, 19, 22]
    assert out[6]["messages"] == raw[6]["messages"]


def test_split_code_outputs_edge_cases():
    two_rounds = [
        U("q"),
        A(
            "First:\n```python\nprint(1)\n```\n```output\n1\n```\nThen:\n```python\nprint(2)\n```\n```output\n```\nDone."
        ),
    ]
    assert split_code_outputs(two_rounds) == [
        U("q"),
        A("First:\n```python\nprint(1)\n```"),
        U("```output\n1\n```"),
        A("Then:\n```python\nprint(2)\n```"),
        U("```output\n```"),
        A("Done."),
    ]
    already = [U("q"), A("```python\nx\n```"), U("```output\n1\n```"), A("1")]
    assert split_code_outputs(already) == already
    unterminated = [U("q"), A("```python\nx\n```\n```output\n1")]
    assert split_code_outputs(unterminated) == unterminated
    out, counts = normalize(
        [{"messages": [U("q"), A("```python\nx\n```\n```output\n1\n```")], "gt": "1", "gt_cot": ""}],
        "sft",
        skip_invalid=True,
    )
    assert len(out) == 0 and counts == Counter({"empty content": 1})  # nothing after the output block


def test_tora_gsm8k_trajectories_real_rows(real):
    ds = real(f"{TORA}/gsm8k_test_outputs.jsonl")
    assert detect_format(ds.column_names) == "tora_gsm8k"
    out, counts = normalize_dataset(ds, "gsm8k_test_outputs.jsonl", "unpaired")
    assert len(out) == 1319 and counts == Counter()
    assert out.column_names == ["prompt", "completion", "label", "prompt_id"]
    assert sum(out["label"]) == 1062  # pred == gt up to commas / 1e-4 (exact string match gives 1051)
    question = "Geb is 10 less than half the age of Haley. If Haley is 26 years old, how old is Geb?"
    assert out[1162] == {
        "prompt": [U(question)],
        "completion": [
            A(
                "```python\ndef calculate_age():\n"
                f'    """{question}"""\n'
                "    haley_age = 26\n    geb_age = (haley_age / 2) - 10\n    return geb_age\n\n"
                "geb_age = calculate_age()\nprint(geb_age)\n```\n```output\n3.0\n```\nGeb is $\\boxed{13}$ years old."
            )
        ],
        "label": False,  # the code printed 3.0 (= gt) but the boxed answer is 13
        "prompt_id": "1162",
    }
    assert out[462]["label"] is True and out[462]["prompt_id"] == "462"
    # Correct trajectories as multi-turn SFT: keep label True, then split the code outputs.
    sft = unpaired_to_sft(out)
    assert len(sft) == 1062 and sft.column_names == ["messages", "prompt_id"]
    split, counts = normalize_dataset(sft, "gsm8k-correct", "sft", adapter="math_code")
    assert counts == Counter() and len(split) == 1062
    assert Counter(len(r["messages"]) for r in split) == Counter({4: 1062})
    assert split[sft["prompt_id"].index("462")]["messages"][2] == U("```output\n71.0\n```")


def test_tora_gsm8k_rows_as_prompts_carry_the_gold_answer(real):
    ds = real(f"{TORA}/gsm8k_test_outputs.jsonl")
    assert detect_format(ds.column_names, "prompt") == "tora_gsm8k_prompt"
    out, counts = normalize_dataset(ds, "gsm8k_test_outputs.jsonl", "prompt")
    assert len(out) == 1319 and counts == Counter()
    assert out[0] == {"prompt": [U(ds[0]["question"])], "prompt_id": "0", "reference": "18"}  # gt, for RL rewards


def test_answers_match():
    assert answers_match("5600", "5,600")
    assert answers_match("18.00001", "18")
    assert not answers_match("13", "3")
    assert not answers_match("276001", "276000")
    assert answers_match(" x+1 ", "x+1") and not answers_match("x", "y")


@pytest.mark.parametrize(
    "columns,schema,expected",
    [
        (["instruction", "input", "output"], None, "alpaca"),
        (["conversations", "chosen", "rejected"], None, "llama_factory_sharegpt_pairwise"),
        (["messages", "label"], None, "llama_factory_kto"),
        (["conversations", "tools"], None, "sharegpt"),
        (["dataset", "gt", "gt_cot", "id", "level", "messages"], None, "math_code"),
        (["code", "gt", "gt_cot", "idx", "pred", "question", "report"], None, "tora_gsm8k"),
        (["prompt", "prompt_id", "messages"], None, "ultrachat"),
        (["prompt", "prompt_id", "messages"], "prompt", "ultrachat_prompt"),
        (
            ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"],
            None,
            "ultrafeedback",
        ),
        (["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"], "sft", "sft"),
        (["prompt", "chosen", "rejected", "score_chosen"], None, "preference"),
        (["chosen", "rejected"], None, "preference_implicit"),
        (["prompt", "completion", "label"], None, "unpaired"),
        (["prompt", "completion"], None, "prompt_completion"),
        (["messages"], None, "sft"),
        (["messages", "tools"], "sft", "sft"),
        (["prompt", "reference"], None, "prompt"),
        (list(oasst_message("m", None, "prompter", "x")), None, "oasst"),
    ],
)
def test_detect_format(columns, schema, expected):
    assert detect_format(columns, schema) == expected
