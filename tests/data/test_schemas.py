"""chatalign.data.schemas: the row contract, message and row validation with exact fields and reasons."""



import pytest
from helpers.rows import A, S, T, U

from chatalign.data.schemas import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ROLES,
    SCHEMAS,
    RowProblem,
    schema_features,
    validate_messages,
    validate_row,
)


def test_schema_constants_match_the_contract():
    assert SCHEMAS == ("sft", "preference", "unpaired", "prompt")
    assert ROLES == ("system", "user", "assistant", "tool")
    assert REQUIRED_COLUMNS == {
        "sft": ("messages",),
        "preference": ("prompt", "chosen", "rejected"),
        "unpaired": ("prompt", "completion", "label"),
        "prompt": ("prompt",),
    }
    assert OPTIONAL_COLUMNS["preference"] == ("score_chosen", "score_rejected", "prompt_id", "source")
    assert OPTIONAL_COLUMNS["sft"][0] == "tools"
    assert "reference" in OPTIONAL_COLUMNS["prompt"]


def test_schema_features_types():
    features = schema_features("preference", ["score_chosen", "prompt_id"])
    assert list(features) == ["prompt", "chosen", "rejected", "score_chosen", "prompt_id"]
    assert features["score_chosen"].dtype == "float64"
    assert features["prompt_id"].dtype == "string"
    assert schema_features("unpaired")["label"].dtype == "bool"
    with pytest.raises(ValueError, match="column 'tools' is not part of schema 'prompt'"):
        schema_features("prompt", ["tools"])
    with pytest.raises(ValueError, match="unknown schema 'dpo'"):
        schema_features("dpo")


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
    problem = validate_messages(messages)
    assert problem == RowProblem(field, reason, detail)
    assert str(problem) == f"field '{field}': {detail}"


def test_validate_messages_accepts_valid_conversations_and_checks_last_role():
    tool_chat = [S("s"), U("weather?"), A('{"name": "w"}'), T('{"t": 1}'), T('{"t": 2}'), A("sunny")]
    assert validate_messages(tool_chat, final_roles=("assistant",)) is None
    assert validate_messages([U("q")]) is None
    assert validate_messages([U("q")], "prompt", final_roles=("assistant",)) == RowProblem(
        "prompt[0].role", "bad last turn", "must end with 'assistant', got 'user'"
    )
    assert validate_messages([U("q"), A("a")], "prompt", final_roles=("user", "tool")) == RowProblem(
        "prompt[1].role", "bad last turn", "must end with 'user' or 'tool', got 'assistant'"
    )


def test_row_validators():
    good_pref = {"prompt": [U("q")], "chosen": [A("yes")], "rejected": [A("no")]}
    assert validate_row(good_pref, "preference") is None
    assert validate_row({**good_pref, "prompt": [U("q"), A("a"), U("q2"), A("a2"), T("t")]}, "preference") is None
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
        assert validate_row(row, schema) == expected, row
    assert validate_row({"prompt": [U("q"), A("call"), T("out")]}, "prompt") is None
    assert validate_row({"prompt": [U("q")], "completion": [A("a")], "label": False}, "unpaired") is None
