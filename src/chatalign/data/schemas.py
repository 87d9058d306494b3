"""Canonical chat rows (TRL "conversational" format): the four schemas, their validation and row-level helpers.

Four row schemas are used everywhere else in chatalign:

- ``sft``:        ``{"messages": [msg, ...]}``, last message from the assistant.
- ``preference``: ``{"prompt": [msg, ...], "chosen": [assistant msg], "rejected": [assistant msg]}``.
- ``unpaired``:   ``{"prompt": [msg, ...], "completion": [assistant msg], "label": bool}``.
- ``prompt``:     ``{"prompt": [msg, ...]}``.

A message is ``{"role": ..., "content": str}`` with role one of system, user, assistant, tool. Optional columns per
schema are listed in :data:`OPTIONAL_COLUMNS`. An unpaired ``label`` is a bool; the ints 0 and 1 are accepted and
converted (KTO files often store them), any other value (2, "true", 1.0, None) is a row error.

Conversation rules (checked by :func:`validate_messages`): the list is non-empty; a system message may only be the
first; the first non-system message is from the user; user and assistant alternate; a tool message may only follow an
assistant message (the function call) or another tool message, and is followed by an assistant or another tool
message; content is a non-blank string.

Problems are located precisely: a :class:`RowProblem` names the field (``messages[3].role``) and a stable reason key
(:data:`SKIP_REASONS`); :class:`DataValidationError` adds the dataset and the row. Raw formats are turned into these
rows by the adapters (:mod:`chatalign.data.registry`, :mod:`chatalign.data.adapters`), and whole datasets by
:func:`chatalign.data.normalize.normalize_dataset`.
"""


from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
SCHEMAS = ("sft", "preference", "unpaired", "prompt")

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
}
# Kept by normalize_dataset when the source (or the adapter) provides them; every other column is dropped.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("tools", "prompt_id", "source"),
    "preference": ("score_chosen", "score_rejected", "prompt_id", "source"),
    "unpaired": ("prompt_id", "source"),
    "prompt": ("prompt_id", "reference", "source"),
}
MESSAGE_LIST_COLUMNS = ("messages", "prompt", "chosen", "rejected", "completion")
STRING_COLUMNS = ("tools", "prompt_id", "source", "reference")
FLOAT_COLUMNS = ("score_chosen", "score_rejected")

# Reason keys used in DataValidationError.reason and in the skip counters of normalize_dataset.
SKIP_REASONS = (
    "missing column",  # a required column/key is absent (dataset-level: always an error, never skipped)
    "missing value",  # a required value is None (absent key in a JSON row, null in the file)
    "bad type",  # a value has the wrong type (e.g. content is a list)
    "empty conversation",  # a message list is empty
    "unknown role",  # a role (or ShareGPT 'from', OASST 'role') outside the known set
    "empty content",  # content is "" or whitespace-only
    "misplaced system",  # a system message after index 0
    "bad first turn",  # first non-system message is not from the user
    "not alternating",  # user/assistant/tool order broken
    "bad last turn",  # sft not ending with assistant, prompt not ending with user/tool
    "bad completion",  # chosen/rejected/completion is not exactly one assistant message
    "identical pair",  # chosen == rejected
    "prefix mismatch",  # chosen and rejected conversations disagree before their last turn
    "bad label",  # unpaired label not a bool (or 0/1)
    "bad tools",  # tools is not a JSON string (or list/dict)
)


# ----------------------------------------------------------------------------------------------------------------------
# Problems and errors


@dataclass(frozen=True)
class RowProblem:
    """What is wrong with one row: the field path (``messages[3].role``), a stable reason key and a readable detail."""

    field: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"field '{self.field}': {self.detail}"


class InvalidRow(ValueError):
    """Raised by adapters (and row conversion) for a row-level problem; normalize_dataset adds dataset and row."""

    def __init__(self, field: str, reason: str, detail: str, *, after_conversion: str | None = None):
        self.problem = RowProblem(field, reason, detail)
        self.after_conversion = after_conversion
        super().__init__(str(self.problem))


class DataValidationError(ValueError):
    """A dataset problem, located as precisely as possible (dataset name, 0-based row index, field path)."""

    def __init__(
        self,
        source: str,
        detail: str,
        *,
        row: int | None = None,
        field: str | None = None,
        reason: str = "invalid",
    ):
        self.source = source
        self.row = row
        self.field = field
        self.reason = reason
        self.detail = detail
        where = f"dataset '{source}'"
        if row is not None:
            where += f" row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {detail}")


# ----------------------------------------------------------------------------------------------------------------------
# Validation

# Which roles may follow a given role (None = start of conversation). System is handled separately.
_ALLOWED_NEXT: dict[str | None, tuple[str, ...]] = {
    None: ("user",),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("assistant", "tool"),
}


def type_name(value: Any) -> str:
    return type(value).__name__


def _quoted_list(values: Iterable[str]) -> str:
    values = [f"'{v}'" for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def check_content(content: Any, field: str) -> RowProblem | None:
    """Problem with one message's text (missing, not a string, empty or whitespace-only), or None."""
    if content is None:
        return RowProblem(field, "missing value", "content is missing")
    if not isinstance(content, str):
        return RowProblem(field, "bad type", f"content must be a string, got {type_name(content)}")
    if not content.strip():
        detail = "content is empty" if content == "" else "content is whitespace-only"
        return RowProblem(field, "empty content", detail)
    return None


def check_message(message: Any, field: str) -> RowProblem | None:
    """Problem with one message on its own (dict shape, role, content), or None. Order is checked elsewhere."""
    if not isinstance(message, Mapping):
        return RowProblem(
            field, "bad type", f"expected a message dict with 'role' and 'content', got {type_name(message)}"
        )
    role = message.get("role")
    if role is None:
        return RowProblem(f"{field}.role", "missing value", "role is missing")
    if not isinstance(role, str):
        return RowProblem(f"{field}.role", "bad type", f"role must be a string, got {type_name(role)}")
    if role not in ROLES:
        return RowProblem(
            f"{field}.role", "unknown role", f"unknown role '{role}' (expected one of {', '.join(ROLES)})"
        )
    return check_content(message.get("content"), f"{field}.content")


def _conversation_shape(messages: Any, field: str) -> RowProblem | None:
    """A conversation value that is missing, not a list, or empty."""
    if messages is None:
        return RowProblem(field, "missing value", "value is missing")
    if not isinstance(messages, list):
        return RowProblem(field, "bad type", f"expected a list of messages, got {type_name(messages)}")
    if not messages:
        return RowProblem(field, "empty conversation", "conversation is empty")
    return None


def check_message_list(messages: Any, field: str) -> RowProblem | None:
    """First shape problem of a conversation: missing, not a list, empty, or a malformed message (no order rules)."""
    problem = _conversation_shape(messages, field)
    if problem is not None:
        return problem
    for index, message in enumerate(messages):
        problem = check_message(message, f"{field}[{index}]")
        if problem is not None:
            return problem
    return None


def validate_messages(
    messages: Any, field: str = "messages", *, final_roles: Sequence[str] | None = None
) -> RowProblem | None:
    """First problem in a conversation (shape, roles, order, content; last role in ``final_roles`` if given)."""
    problem = _conversation_shape(messages, field)
    if problem is not None:
        return problem
    previous: str | None = None
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        problem = check_message(message, where)
        if problem is not None:
            return problem
        role = message["role"]
        if role == "system":
            if index != 0:
                return RowProblem(
                    f"{where}.role", "misplaced system", f"system message only allowed at index 0, found at {index}"
                )
        elif role not in _ALLOWED_NEXT[previous]:
            if previous in (None, "system"):
                return RowProblem(
                    f"{where}.role", "bad first turn", f"first non-system message must be 'user', got '{role}'"
                )
            return RowProblem(
                f"{where}.role",
                "not alternating",
                f"'{role}' message cannot follow '{previous}' (expected {_quoted_list(_ALLOWED_NEXT[previous])})",
            )
        previous = role
    if final_roles is not None and messages[-1]["role"] not in final_roles:
        return RowProblem(
            f"{field}[{len(messages) - 1}].role",
            "bad last turn",
            f"must end with {_quoted_list(final_roles)}, got '{messages[-1]['role']}'",
        )
    return None


def validate_completion(messages: Any, field: str) -> RowProblem | None:
    """Problem with a chosen/rejected/completion value, which must be exactly one non-empty assistant message."""
    if messages is None:
        return RowProblem(field, "missing value", "value is missing")
    if not isinstance(messages, list):
        return RowProblem(field, "bad type", f"expected a list with one assistant message, got {type_name(messages)}")
    if len(messages) != 1:
        return RowProblem(
            field, "bad completion", f"expected exactly one assistant message, got {len(messages)} messages"
        )
    problem = check_message(messages[0], f"{field}[0]")
    if problem is not None:
        return problem
    if messages[0]["role"] != "assistant":
        return RowProblem(
            f"{field}[0].role", "bad completion", f"expected role 'assistant', got '{messages[0]['role']}'"
        )
    return None


def _required(row: Mapping, column: str) -> tuple[Any, RowProblem | None]:
    if column not in row:
        present = ", ".join(row) or "none"
        return None, RowProblem(column, "missing column", f"missing column '{column}' (row has: {present})")
    return row[column], None


def _validate_optional(row: Mapping, schema: str) -> RowProblem | None:
    for column in OPTIONAL_COLUMNS[schema]:
        value = row.get(column)
        if value is None:
            continue
        if column in FLOAT_COLUMNS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return RowProblem(column, "bad type", f"{column} must be a number, got {type_name(value)}")
        elif not isinstance(value, str):
            reason = "bad tools" if column == "tools" else "bad type"
            return RowProblem(column, reason, f"{column} must be a string, got {type_name(value)}")
        elif column == "tools":
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                return RowProblem(column, "bad tools", f"tools is not valid JSON ({exc})")
            if not isinstance(parsed, (list, dict)):
                return RowProblem(column, "bad tools", f"tools must be a JSON list or object, got {type_name(parsed)}")
    return None


def validate_sft_row(row: Mapping) -> RowProblem | None:
    """First problem in an sft row: a valid conversation ending with an assistant turn, optional columns typed."""
    messages, problem = _required(row, "messages")
    problem = problem or validate_messages(messages, "messages", final_roles=("assistant",))
    return problem or _validate_optional(row, "sft")


def _validate_prompt_messages(row: Mapping) -> RowProblem | None:
    prompt, problem = _required(row, "prompt")
    return problem or validate_messages(prompt, "prompt", final_roles=("user", "tool"))


def validate_preference_row(row: Mapping) -> RowProblem | None:
    """First problem in a preference row: prompt ends with user/tool, chosen/rejected one assistant message each, differ."""
    problem = _validate_prompt_messages(row)
    if problem is not None:
        return problem
    for column in ("chosen", "rejected"):
        value, problem = _required(row, column)
        problem = problem or validate_completion(value, column)
        if problem is not None:
            return problem
    if row["chosen"][0]["content"] == row["rejected"][0]["content"]:
        return RowProblem("rejected[0].content", "identical pair", "chosen and rejected are identical")
    return _validate_optional(row, "preference")


def validate_unpaired_row(row: Mapping) -> RowProblem | None:
    """First problem in an unpaired (KTO) row: prompt ends with user/tool, one assistant completion, bool label."""
    problem = _validate_prompt_messages(row)
    if problem is not None:
        return problem
    completion, problem = _required(row, "completion")
    problem = problem or validate_completion(completion, "completion")
    if problem is not None:
        return problem
    label, problem = _required(row, "label")
    if problem is not None:
        return problem
    if label is None:
        return RowProblem("label", "missing value", "value is missing")
    if not isinstance(label, bool):
        shown = repr(label) if isinstance(label, (int, float, str)) else type_name(label)
        return RowProblem("label", "bad label", f"label must be a bool (or 0/1), got {shown}")
    return _validate_optional(row, "unpaired")


def validate_prompt_row(row: Mapping) -> RowProblem | None:
    """First problem in a prompt row: a valid conversation ending with a user (or tool) message."""
    return _validate_prompt_messages(row) or _validate_optional(row, "prompt")


ROW_VALIDATORS: dict[str, Callable[[Mapping], RowProblem | None]] = {
    "sft": validate_sft_row,
    "preference": validate_preference_row,
    "unpaired": validate_unpaired_row,
    "prompt": validate_prompt_row,
}


def check_schema(schema: str) -> None:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema '{schema}' (expected one of {', '.join(SCHEMAS)})")


def validate_row(row: Mapping, schema: str) -> RowProblem | None:
    """First problem in a canonical row of the given schema, or None."""
    check_schema(schema)
    return ROW_VALIDATORS[schema](row)


# ----------------------------------------------------------------------------------------------------------------------
# Canonical-row helpers


def coerce_row(row: dict) -> dict:
    """Lossless conversions to canonical scalar types; anything else is left for the validator to reject."""
    label = row.get("label")
    if not isinstance(label, bool) and isinstance(label, int) and label in (0, 1):
        # KTO data often stores the label as 0/1; other ints, floats and strings stay errors ("bad label").
        row["label"] = bool(label)
    tools = row.get("tools")
    if isinstance(tools, (list, dict)):
        row["tools"] = json.dumps(tools, ensure_ascii=False)
    elif isinstance(tools, str) and not tools.strip():
        row["tools"] = None
    prompt_id = row.get("prompt_id")
    if isinstance(prompt_id, int) and not isinstance(prompt_id, bool):
        row["prompt_id"] = str(prompt_id)
    for column in FLOAT_COLUMNS:
        value = row.get(column)
        if isinstance(value, int) and not isinstance(value, bool):
            row[column] = float(value)
    return row


def clean_messages(messages: list) -> list[dict]:
    # Validated messages may carry extra keys (name, tool_calls=None after Arrow unification): keep the contract's two.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def as_messages(value: Any, role: str) -> Any:
    """TRL "standard" values to conversational ones: a string becomes one message, a single dict a one-item list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping):
        return [value]
    return value


def schema_features(schema: str, optional_columns: Iterable[str] = ()):
    """``datasets.Features`` of canonical rows: the schema's required columns plus the given optional ones."""
    from datasets import Features, List, Value

    check_schema(schema)
    message_list = List({"role": Value("string"), "content": Value("string")})
    features = {}
    for column in (*REQUIRED_COLUMNS[schema], *optional_columns):
        if column not in REQUIRED_COLUMNS[schema] + OPTIONAL_COLUMNS[schema]:
            raise ValueError(f"column '{column}' is not part of schema '{schema}'")
        if column in MESSAGE_LIST_COLUMNS:
            features[column] = message_list
        elif column == "label":
            features[column] = Value("bool")
        elif column in FLOAT_COLUMNS:
            features[column] = Value("float64")
        else:
            features[column] = Value("string")
    return Features(features)
