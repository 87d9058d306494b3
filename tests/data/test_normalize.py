"""chatalign.data.normalize: whole datasets to canonical rows (errors located, skips counted) and the conversions
between schemas."""

import json
from collections import Counter

import pytest
from datasets import Dataset, load_dataset
from helpers.rows import A, S, T, U, error_of, normalize

from chatalign.data.normalize import (
    normalize_dataset,
    preference_to_prompt,
    preference_to_sft,
    preference_to_unpaired,
    sft_to_prompt,
    unpaired_to_sft,
)
from chatalign.data.schemas import DataValidationError, validate_row


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
        normalize_dataset(ds, "data/alpaca.json", "sft", adapter="sft", skip_invalid=True)
    assert str(info.value) == (
        "dataset 'data/alpaca.json': missing column 'messages' required by format 'sft' "
        "(columns present: instruction, output)"
    )
    assert info.value.reason == "missing column" and info.value.row is None
    ds = Dataset.from_list([{"conversations": [{"role": "user", "content": "q"}]}])
    with pytest.raises(
        DataValidationError, match="missing column 'label' or 'kto_tag' required by format 'llama_factory_kto'"
    ):
        normalize_dataset(ds, "kto.json", "unpaired", adapter="llama_factory_kto")


def test_unknown_format_and_schema_mismatch():
    ds = Dataset.from_list([{"text": "a", "meta": 1}])
    with pytest.raises(DataValidationError) as info:
        normalize_dataset(ds, "mystery.json", "sft")
    message = str(info.value)
    assert message.startswith(
        "dataset 'mystery.json': cannot detect the dataset format as 'sft' rows from columns [text, meta]; "
        "known formats: oasst [sft: message_id + message_tree_id + parent_id + role + text]; "
    )
    assert "alpaca [sft: instruction + output]" in message and "sharegpt [sft: conversations]" in message
    assert "ultrafeedback" not in message  # only formats producing the requested schema are listed
    with pytest.raises(ValueError, match=r"format 'ultrafeedback' produces 'preference' rows, not 'sft'"):
        normalize_dataset(ds, "x", "sft", adapter="ultrafeedback")
    with pytest.raises(ValueError, match=r"unknown dataset format 'nope' \(known formats: oasst, ultrafeedback, "):
        normalize_dataset(ds, "x", "sft", adapter="nope")


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
    first = normalize_dataset(ds, str(path), "sft", skip_invalid=True)
    second = normalize_dataset(ds, str(path), "sft", skip_invalid=True)
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
    out, counts = normalize_dataset(ds, "empty", "sft", adapter="sft")
    assert len(out) == 0 and out.column_names == ["messages"] and counts == Counter()


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
    out = preference_to_unpaired(Dataset.from_list(PREFS))
    assert out.column_names == ["prompt", "completion", "label", "prompt_id"]
    assert out.to_list() == [
        {"prompt": [S("s"), U("q1")], "completion": [A("good1")], "label": True, "prompt_id": "p1"},
        {"prompt": [S("s"), U("q1")], "completion": [A("bad1")], "label": False, "prompt_id": "p1"},
        {"prompt": [U("q2")], "completion": [A("good2")], "label": True, "prompt_id": "p2"},
        {"prompt": [U("q2")], "completion": [A("bad2")], "label": False, "prompt_id": "p2"},
    ]
    assert all(validate_row(r, "unpaired") is None for r in out)


def test_preference_to_sft():
    out = preference_to_sft(Dataset.from_list(PREFS))
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
    out = sft_to_prompt(ds)
    assert out.column_names == ["prompt", "reference", "source"]
    assert out.to_list() == [
        {"prompt": [U("q"), A("a"), U("q2")], "reference": "a2", "source": "x"},
        {"prompt": [U("w?"), A("call"), T("out")], "reference": "sunny", "source": "y"},
    ]
    assert all(validate_row(r, "prompt") is None for r in out)
    with pytest.raises(DataValidationError) as info:
        sft_to_prompt(Dataset.from_list([{"messages": [U("q"), A("a")]}, {"messages": [U("q")]}]), "chats")
    assert str(info.value) == "dataset 'chats' row 1, field 'messages[0].role': must end with 'assistant', got 'user'"


def test_preference_to_prompt_keeps_the_chosen_reply_as_reference():
    ds = Dataset.from_list([
        {"prompt": [S("s"), U("q1")], "chosen": [A("good1")], "rejected": [A("bad1")], "prompt_id": "p1"},
        {"prompt": [U("q2")], "chosen": [A("good2")], "rejected": [A("bad2")], "prompt_id": "p2"},
    ])
    out = preference_to_prompt(ds)
    assert out.column_names == ["prompt", "prompt_id", "reference"]
    assert out.to_list() == [{"prompt": [S("s"), U("q1")], "reference": "good1", "prompt_id": "p1"},
                             {"prompt": [U("q2")], "reference": "good2", "prompt_id": "p2"}]
    assert all(validate_row(r, "prompt") is None for r in out)


def test_unpaired_to_sft_keeps_desirable_rows():
    ds = Dataset.from_list(
        [
            {"prompt": [U("q")], "completion": [A("good")], "label": True},
            {"prompt": [U("q")], "completion": [A("bad")], "label": False},
        ]
    )
    assert unpaired_to_sft(ds).to_list() == [{"messages": [U("q"), A("good")]}]
    assert len(unpaired_to_sft(ds, desirable_only=False)) == 2
    empty = unpaired_to_sft(ds.select([]))
    assert len(empty) == 0 and empty.column_names == ["messages"]


def test_extra_columns_are_carried_through_or_missing_is_an_error():
    from datasets import Dataset

    from chatalign.data.normalize import normalize_dataset
    from chatalign.data.schemas import DataValidationError

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
