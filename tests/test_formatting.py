"""chatalign.formatting: canonical schemas, validation messages, normalize_dataset, conversions, the adapter registry."""

import json
from collections import Counter

import pytest
from datasets import Dataset, load_dataset
from rows import A, S, T, U, error_of, normalize

from chatalign import formatting as F
from chatalign.formatting import DataValidationError, RowProblem

# ----------------------------------------------------------------------------------------------------------------------
# Schemas


def test_schema_constants_match_the_contract():
    assert F.SCHEMAS == ("sft", "preference", "unpaired", "prompt")
    assert F.ROLES == ("system", "user", "assistant", "tool")
    assert F.REQUIRED_COLUMNS == {
        "sft": ("messages",),
        "preference": ("prompt", "chosen", "rejected"),
        "unpaired": ("prompt", "completion", "label"),
        "prompt": ("prompt",),
    }
    assert F.OPTIONAL_COLUMNS["preference"] == ("score_chosen", "score_rejected", "prompt_id", "source")
    assert F.OPTIONAL_COLUMNS["sft"][0] == "tools"
    assert "reference" in F.OPTIONAL_COLUMNS["prompt"]


def test_schema_features_types():
    features = F.schema_features("preference", ["score_chosen", "prompt_id"])
    assert list(features) == ["prompt", "chosen", "rejected", "score_chosen", "prompt_id"]
    assert features["score_chosen"].dtype == "float64"
    assert features["prompt_id"].dtype == "string"
    assert F.schema_features("unpaired")["label"].dtype == "bool"
    with pytest.raises(ValueError, match="column 'tools' is not part of schema 'prompt'"):
        F.schema_features("prompt", ["tools"])
    with pytest.raises(ValueError, match="unknown schema 'dpo'"):
        F.schema_features("dpo")


# ----------------------------------------------------------------------------------------------------------------------
# Message validation: every problem, exact field and text

MESSAGE_CASES = [
    ([], "messages", "empty conversation", "conversation is empty"),
    ("hi", "messages", "bad type", "expected a list of messages, got str"),
    (None, "messages", "missing value", "value is missing"),
    (["hi"], "messages[0]", "bad type", "expected a message dict with 'role' and 'content', got str"),
    ([{"content": "x"}], "messages[0].role", "missing value", "role is missing"),
    ([{"role": 1, "content": "x"}], "messages[0].role", "bad type", "role must be a string, got int"),
    (
        [U("q"), A("a"), U("q"), {"role": "gpt", "content": "x"}],
        "messages[3].role",
        "unknown role",
        "unknown role 'gpt' (expected one of system, user, assistant, tool)",
    ),
    ([{"role": "user"}], "messages[0].content", "missing value", "content is missing"),
    ([{"role": "user", "content": None}], "messages[0].content", "missing value", "content is missing"),
    ([{"role": "user", "content": ["a"]}], "messages[0].content", "bad type", "content must be a string, got list"),
    ([U("q"), A("")], "messages[1].content", "empty content", "content is empty"),
    ([U(" \n\t")], "messages[0].content", "empty content", "content is whitespace-only"),
    (
        [U("q"), S("be nice"), A("a")],
        "messages[1].role",
        "misplaced system",
        "system message only allowed at index 0, found at 1",
    ),
    (
        [S("s"), A("a")],
        "messages[1].role",
        "bad first turn",
        "first non-system message must be 'user', got 'assistant'",
    ),
    ([A("a")], "messages[0].role", "bad first turn", "first non-system message must be 'user', got 'assistant'"),
    ([T("t")], "messages[0].role", "bad first turn", "first non-system message must be 'user', got 'tool'"),
    (
        [U("q"), U("q")],
        "messages[1].role",
        "not alternating",
        "'user' message cannot follow 'user' (expected 'assistant')",
    ),
    (
        [U("q"), A("a"), A("a")],
        "messages[2].role",
        "not alternating",
        "'assistant' message cannot follow 'assistant' (expected 'user' or 'tool')",
    ),
    (
        [U("q"), T("t")],
        "messages[1].role",
        "not alternating",
        "'tool' message cannot follow 'user' (expected 'assistant')",
    ),
    (
        [U("q"), A("call"), T("t"), U("q")],
        "messages[3].role",
        "not alternating",
        "'user' message cannot follow 'tool' (expected 'assistant' or 'tool')",
    ),
]


@pytest.mark.parametrize("messages,field,reason,detail", MESSAGE_CASES)
def test_validate_messages_reports_exact_problem(messages, field, reason, detail):
    problem = F.validate_messages(messages)
    assert problem == RowProblem(field, reason, detail)
    assert str(problem) == f"field '{field}': {detail}"


def test_validate_messages_accepts_valid_conversations_and_checks_last_role():
    tool_chat = [S("s"), U("weather?"), A('{"name": "w"}'), T('{"t": 1}'), T('{"t": 2}'), A("sunny")]
    assert F.validate_messages(tool_chat, final_roles=("assistant",)) is None
    assert F.validate_messages([U("q")]) is None
    assert F.validate_messages([U("q")], "prompt", final_roles=("assistant",)) == RowProblem(
        "prompt[0].role", "bad last turn", "must end with 'assistant', got 'user'"
    )
    assert F.validate_messages([U("q"), A("a")], "prompt", final_roles=("user", "tool")) == RowProblem(
        "prompt[1].role", "bad last turn", "must end with 'user' or 'tool', got 'assistant'"
    )


def test_row_validators():
    good_pref = {"prompt": [U("q")], "chosen": [A("yes")], "rejected": [A("no")]}
    assert F.validate_row(good_pref, "preference") is None
    assert F.validate_row({**good_pref, "prompt": [U("q"), A("a"), U("q2"), A("a2"), T("t")]}, "preference") is None
    cases = [
        (
            {"prompt": [U("q")], "chosen": [A("yes")]},
            "preference",
            RowProblem("rejected", "missing column", "missing column 'rejected' (row has: prompt, chosen)"),
        ),
        (
            {**good_pref, "chosen": [A("yes"), A("more")]},
            "preference",
            RowProblem("chosen", "bad completion", "expected exactly one assistant message, got 2 messages"),
        ),
        (
            {**good_pref, "rejected": [U("no")]},
            "preference",
            RowProblem("rejected[0].role", "bad completion", "expected role 'assistant', got 'user'"),
        ),
        (
            {**good_pref, "rejected": [A("yes")]},
            "preference",
            RowProblem("rejected[0].content", "identical pair", "chosen and rejected are identical"),
        ),
        (
            {**good_pref, "prompt": [U("q"), A("a")]},
            "preference",
            RowProblem("prompt[1].role", "bad last turn", "must end with 'user' or 'tool', got 'assistant'"),
        ),
        (
            {**good_pref, "score_chosen": "8"},
            "preference",
            RowProblem("score_chosen", "bad type", "score_chosen must be a number, got str"),
        ),
        (
            {"prompt": [U("q")], "completion": [A("a")], "label": 2},
            "unpaired",
            RowProblem("label", "bad label", "label must be a bool (or 0/1), got 2"),
        ),
        (
            {"prompt": [U("q")], "completion": [A("a")], "label": "true"},
            "unpaired",
            RowProblem("label", "bad label", "label must be a bool (or 0/1), got 'true'"),
        ),
        (
            {"prompt": [U("q")], "completion": [A("a")], "label": None},
            "unpaired",
            RowProblem("label", "missing value", "value is missing"),
        ),
        (
            {"prompt": [U("q")], "completion": [], "label": True},
            "unpaired",
            RowProblem("completion", "bad completion", "expected exactly one assistant message, got 0 messages"),
        ),
        (
            {"messages": [U("q"), A("a")], "tools": "[{'name'"},
            "sft",
            RowProblem(
                "tools",
                "bad tools",
                "tools is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 3 (char 2))",
            ),
        ),
        (
            {"messages": [U("q"), A("a")], "tools": "3"},
            "sft",
            RowProblem("tools", "bad tools", "tools must be a JSON list or object, got int"),
        ),
        (
            {"messages": [U("q")]},
            "sft",
            RowProblem("messages[0].role", "bad last turn", "must end with 'assistant', got 'user'"),
        ),
        (
            {"prompt": [U("q"), A("a")], "reference": "r"},
            "prompt",
            RowProblem("prompt[1].role", "bad last turn", "must end with 'user' or 'tool', got 'assistant'"),
        ),
        (
            {"prompt": [U("q")], "reference": 3},
            "prompt",
            RowProblem("reference", "bad type", "reference must be a string, got int"),
        ),
    ]
    for row, schema, expected in cases:
        assert F.validate_row(row, schema) == expected, row
    assert F.validate_row({"prompt": [U("q"), A("call"), T("out")]}, "prompt") is None
    assert F.validate_row({"prompt": [U("q")], "completion": [A("a")], "label": False}, "unpaired") is None


# ----------------------------------------------------------------------------------------------------------------------
# normalize_dataset: full error messages, missing columns, skipping and counting


def test_error_message_names_dataset_row_and_field():
    rows = [
        {"messages": [U("q"), A("a"), U("q"), A("a")]},
        {"messages": [U("q"), A("a"), U("q"), A("a")]},
        {"messages": [U("q"), A("a"), U("q"), {"role": "gpt", "content": "a"}]},
    ]
    error = error_of(rows, "sft")
    assert str(error) == (
        "dataset 'data/x.json' row 2, field 'messages[3].role': unknown role 'gpt' "
        "(expected one of system, user, assistant, tool)"
    )
    assert (error.source, error.row, error.field, error.reason) == (
        "data/x.json",
        2,
        "messages[3].role",
        "unknown role",
    )
    assert isinstance(error, ValueError)


def test_error_row_index_is_absolute_across_batches():
    rows = [{"messages": [U("q"), A("a")]}] * 2500
    rows[1700] = {"messages": [U("q"), A("  ")]}
    error = error_of(rows, "sft", name="big")
    assert str(error) == "dataset 'big' row 1700, field 'messages[1].content': content is whitespace-only"


def test_errors_after_a_conversion_say_which_format_produced_the_row():
    rows = [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}]
    assert str(error_of(rows, "sft", name="sg.json")) == (
        "dataset 'sg.json' row 0, field 'messages[1].role': 'user' message cannot follow 'user' (expected "
        "'assistant') (after converting with format 'sharegpt')"
    )
    rows = [{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}]
    assert str(error_of(rows, "sft", name="sg.json")) == (
        "dataset 'sg.json' row 0, field 'conversations[1].from': unknown sharegpt role 'robot' (expected one of "
        "human, user, gpt, assistant, chatgpt, bard, bing, model, system, function_call, observation, tool)"
    )
    rows = [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]}]
    assert str(error_of(rows, "sft", name="sg.json")) == (
        "dataset 'sg.json' row 0, field 'conversations[1].value': content is empty"
    )


def test_missing_column_is_reported_before_any_row_is_read():
    ds = Dataset.from_list([{"instruction": "i", "output": "o"}])
    with pytest.raises(DataValidationError) as info:
        F.normalize_dataset(ds, "data/alpaca.json", "sft", adapter="sft", skip_invalid=True)
    assert str(info.value) == (
        "dataset 'data/alpaca.json': missing column 'messages' required by format 'sft' "
        "(columns present: instruction, output)"
    )
    assert info.value.reason == "missing column" and info.value.row is None
    ds = Dataset.from_list([{"conversations": [{"role": "user", "content": "q"}]}])
    with pytest.raises(
        DataValidationError, match="missing column 'label' or 'kto_tag' required by format 'llama_factory_kto'"
    ):
        F.normalize_dataset(ds, "kto.json", "unpaired", adapter="llama_factory_kto")


def test_unknown_format_and_schema_mismatch():
    ds = Dataset.from_list([{"text": "a", "meta": 1}])
    with pytest.raises(DataValidationError) as info:
        F.normalize_dataset(ds, "mystery.json", "sft")
    message = str(info.value)
    assert message.startswith(
        "dataset 'mystery.json': cannot detect the dataset format as 'sft' rows from columns [text, meta]; "
        "known formats: oasst [sft: message_id + message_tree_id + parent_id + role + text]; "
    )
    assert "alpaca [sft: instruction + output]" in message and "sharegpt [sft: conversations]" in message
    assert "ultrafeedback" not in message  # only formats producing the requested schema are listed
    with pytest.raises(ValueError, match=r"format 'ultrafeedback' produces 'preference' rows, not 'sft'"):
        F.normalize_dataset(ds, "x", "sft", adapter="ultrafeedback")
    with pytest.raises(ValueError, match=r"unknown dataset format 'nope' \(known formats: oasst, ultrafeedback, "):
        F.normalize_dataset(ds, "x", "sft", adapter="nope")


def test_skip_invalid_drops_bad_rows_and_counts_them_by_reason():
    good = {"messages": [U("q"), A("a")]}
    rows = [
        good,
        {"messages": [U("q"), A("")]},
        {"messages": [U("q"), {"role": "gpt", "content": "a"}]},
        {"messages": [U("q"), U("q"), A("a")]},
        {"messages": [U("q")]},
        {"messages": [U("q"), A("a"), S("s"), U("q"), A("a")]},
        {"messages": [U(" "), A("a")]},
        {"messages": []},
        {"messages": None},
        {"messages": [U("last good"), A("a")]},
    ]
    out, counts = normalize(rows, "sft", skip_invalid=True)
    assert counts == Counter(
        {
            "empty content": 2,
            "unknown role": 1,
            "not alternating": 1,
            "bad last turn": 1,
            "misplaced system": 1,
            "empty conversation": 1,
            "missing value": 1,
        }
    )
    assert out.to_list() == [good, {"messages": [U("last good"), A("a")]}]


def test_skip_counts_survive_cached_file_backed_datasets(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"messages": [U("q"), A("a")]}, {"messages": [U("q"), A("")]}] * 3
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    first = F.normalize_dataset(ds, str(path), "sft", skip_invalid=True)
    second = F.normalize_dataset(ds, str(path), "sft", skip_invalid=True)
    assert first[1] == second[1] == Counter({"empty content": 3})
    assert len(first[0]) == len(second[0]) == 3


def test_extra_columns_are_dropped_and_optional_ones_kept():
    rows = [
        {
            "prompt": [U("q")],
            "chosen": [A("yes")],
            "rejected": [A("no")],
            "score_chosen": 9,
            "score_rejected": 2.5,
            "prompt_id": 17,
            "source": "hand",
            "noise": "dropped",
        }
    ]
    out, counts = normalize(rows, "preference")
    assert out.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "prompt_id", "source"]
    assert out[0] == {
        "prompt": [U("q")],
        "chosen": [A("yes")],
        "rejected": [A("no")],
        "score_chosen": 9.0,
        "score_rejected": 2.5,
        "prompt_id": "17",
        "source": "hand",
    }
    assert counts == Counter()


def test_extra_message_keys_are_dropped():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q", "name": "bob"},
                {"role": "assistant", "content": "a", "name": None},
            ]
        }
    ]
    out, _ = normalize(rows, "sft")
    assert out[0]["messages"] == [U("q"), A("a")]


def test_empty_dataset_normalizes_to_empty_canonical_dataset():
    ds = Dataset.from_dict({"messages": []})
    out, counts = F.normalize_dataset(ds, "empty", "sft", adapter="sft")
    assert len(out) == 0 and out.column_names == ["messages"] and counts == Counter()


# ----------------------------------------------------------------------------------------------------------------------
# Conversions

PREFS = [
    {
        "prompt": [S("s"), U("q1")],
        "chosen": [A("good1")],
        "rejected": [A("bad1")],
        "prompt_id": "p1",
        "score_chosen": 3.0,
    },
    {"prompt": [U("q2")], "chosen": [A("good2")], "rejected": [A("bad2")], "prompt_id": "p2", "score_chosen": 1.0},
]


def test_preference_to_unpaired():
    out = F.preference_to_unpaired(Dataset.from_list(PREFS))
    assert out.column_names == ["prompt", "completion", "label", "prompt_id"]
    assert out.to_list() == [
        {"prompt": [S("s"), U("q1")], "completion": [A("good1")], "label": True, "prompt_id": "p1"},
        {"prompt": [S("s"), U("q1")], "completion": [A("bad1")], "label": False, "prompt_id": "p1"},
        {"prompt": [U("q2")], "completion": [A("good2")], "label": True, "prompt_id": "p2"},
        {"prompt": [U("q2")], "completion": [A("bad2")], "label": False, "prompt_id": "p2"},
    ]
    assert all(F.validate_row(r, "unpaired") is None for r in out)


def test_preference_to_sft():
    out = F.preference_to_sft(Dataset.from_list(PREFS))
    assert out.to_list() == [
        {"messages": [S("s"), U("q1"), A("good1")], "prompt_id": "p1"},
        {"messages": [U("q2"), A("good2")], "prompt_id": "p2"},
    ]


def test_sft_to_prompt():
    ds = Dataset.from_list(
        [
            {"messages": [U("q"), A("a"), U("q2"), A("a2")], "source": "x"},
            {"messages": [U("w?"), A("call"), T("out"), A("sunny")], "source": "y"},
        ]
    )
    out = F.sft_to_prompt(ds)
    assert out.column_names == ["prompt", "reference", "source"]
    assert out.to_list() == [
        {"prompt": [U("q"), A("a"), U("q2")], "reference": "a2", "source": "x"},
        {"prompt": [U("w?"), A("call"), T("out")], "reference": "sunny", "source": "y"},
    ]
    assert all(F.validate_row(r, "prompt") is None for r in out)
    with pytest.raises(DataValidationError) as info:
        F.sft_to_prompt(Dataset.from_list([{"messages": [U("q"), A("a")]}, {"messages": [U("q")]}]), "chats")
    assert str(info.value) == "dataset 'chats' row 1, field 'messages[0].role': must end with 'assistant', got 'user'"


def test_unpaired_to_sft_keeps_desirable_rows():
    ds = Dataset.from_list(
        [
            {"prompt": [U("q")], "completion": [A("good")], "label": True},
            {"prompt": [U("q")], "completion": [A("bad")], "label": False},
        ]
    )
    assert F.unpaired_to_sft(ds).to_list() == [{"messages": [U("q"), A("good")]}]
    assert len(F.unpaired_to_sft(ds, desirable_only=False)) == 2
    empty = F.unpaired_to_sft(ds.select([]))
    assert len(empty) == 0 and empty.column_names == ["messages"]


# ----------------------------------------------------------------------------------------------------------------------
# Detection errors and the registry


def test_detect_format_error_lists_known_formats():
    with pytest.raises(ValueError) as info:
        F.detect_format(["conversations", "chosen", "rejected"], schema="sft")
    assert str(info.value).startswith(
        "cannot detect the dataset format as 'sft' rows from columns [conversations, chosen, rejected]; known formats: "
    )
    with pytest.raises(ValueError) as info:
        F.detect_format(["foo"])
    message = str(info.value)
    for name in ("ultrafeedback", "llama_factory_kto", "tora_gsm8k", "alpaca", "sharegpt", "sft", "prompt"):
        assert f"{name} [" in message
    assert "or name a format explicitly (one of oasst, " in message and "llama_factory_alpaca" in message


def test_register_custom_adapter():
    @F.register_adapter("qa_pairs", schema="sft", required=("q", "a"), detect=[{"q", "a"}], priority=1)
    def qa(row):
        """Question/answer columns -> sft."""
        return {"messages": [U(row["q"]), A(row["a"])]}

    try:
        assert "qa_pairs" in F.list_adapters("sft") and "qa_pairs" not in F.list_adapters("preference")
        assert F.get_adapter("qa_pairs").description == "Question/answer columns -> sft."
        out, _ = normalize([{"q": "2+2?", "a": "4", "extra": 1}], "sft")
        assert out.to_list() == [{"messages": [U("2+2?"), A("4")]}]
        with pytest.raises(ValueError, match="adapter 'qa_pairs' is already registered"):
            F.register_adapter("qa_pairs", schema="sft")(qa)
        error = error_of([{"q": "2+2?", "a": ""}], "sft", name="qa.csv")
        assert str(error) == (
            "dataset 'qa.csv' row 0, field 'messages[1].content': content is empty (after converting with format "
            "'qa_pairs')"
        )
    finally:
        F.unregister_adapter("qa_pairs")
    assert "qa_pairs" not in F.list_adapters()
    with pytest.raises(ValueError, match="unknown dataset format 'qa_pairs'"):
        F.get_adapter("qa_pairs")


def test_extra_columns_are_carried_through_or_missing_is_an_error():
    from datasets import Dataset

    from chatalign.formatting import DataValidationError, normalize_dataset

    ds = Dataset.from_list([
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "rm_weight": 0.5},
        {"prompt": "Q2", "chosen": "fine", "rejected": "poor", "rm_weight": 2.0},
    ])
    out, _ = normalize_dataset(ds, "w.jsonl", "preference", extra_columns=["rm_weight"])
    assert out["rm_weight"] == [0.5, 2.0]
    assert out[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    with pytest.raises(DataValidationError) as err:
        normalize_dataset(ds.remove_columns("rm_weight"), "w.jsonl", "preference", extra_columns=["rm_weight"])
    assert str(err.value).startswith("dataset 'w.jsonl': missing column rm_weight named by the recipe")
