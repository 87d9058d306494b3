"""Canonical chat rows (TRL "conversational" format), their validation, the format-adapter registry and conversions.

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

Raw datasets are turned into canonical rows by *adapters* (one raw row -> one canonical row), registered by name with
:func:`register_adapter` and picked automatically from the column names by :func:`detect_format`; the built-in ones
(TRL, H4 UltraChat/UltraFeedback, Alpaca, ShareGPT, ToRA math, OASST trees) live in :mod:`chatalign.adapters` and are
registered whenever this module is imported. :func:`normalize_dataset` runs an adapter plus validation over a
``datasets.Dataset`` in one pass, either stopping at the first bad row with a :class:`DataValidationError` that names
the dataset, the row (0-based, as in ``ds[i]``) and the field, or (``skip_invalid=True``) dropping bad rows and counting
them by a short, stable reason key (:data:`SKIP_REASONS`).
"""

from __future__ import annotations

import json
from collections import Counter
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


def _type_name(value: Any) -> str:
    return type(value).__name__


def _quoted_list(values: Iterable[str]) -> str:
    values = [f"'{v}'" for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def check_content(content: Any, field: str) -> RowProblem | None:
    """Problem with one message's text (missing, not a string, empty or whitespace-only), or None."""
    if content is None:
        return RowProblem(field, "missing value", "content is missing")
    if not isinstance(content, str):
        return RowProblem(field, "bad type", f"content must be a string, got {_type_name(content)}")
    if not content.strip():
        detail = "content is empty" if content == "" else "content is whitespace-only"
        return RowProblem(field, "empty content", detail)
    return None


def check_message(message: Any, field: str) -> RowProblem | None:
    """Problem with one message on its own (dict shape, role, content), or None. Order is checked elsewhere."""
    if not isinstance(message, Mapping):
        return RowProblem(
            field, "bad type", f"expected a message dict with 'role' and 'content', got {_type_name(message)}"
        )
    role = message.get("role")
    if role is None:
        return RowProblem(f"{field}.role", "missing value", "role is missing")
    if not isinstance(role, str):
        return RowProblem(f"{field}.role", "bad type", f"role must be a string, got {_type_name(role)}")
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
        return RowProblem(field, "bad type", f"expected a list of messages, got {_type_name(messages)}")
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
        return RowProblem(field, "bad type", f"expected a list with one assistant message, got {_type_name(messages)}")
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
                return RowProblem(column, "bad type", f"{column} must be a number, got {_type_name(value)}")
        elif not isinstance(value, str):
            reason = "bad tools" if column == "tools" else "bad type"
            return RowProblem(column, reason, f"{column} must be a string, got {_type_name(value)}")
        elif column == "tools":
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                return RowProblem(column, "bad tools", f"tools is not valid JSON ({exc})")
            if not isinstance(parsed, (list, dict)):
                return RowProblem(column, "bad tools", f"tools must be a JSON list or object, got {_type_name(parsed)}")
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
        shown = repr(label) if isinstance(label, (int, float, str)) else _type_name(label)
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


def _check_schema(schema: str) -> None:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema '{schema}' (expected one of {', '.join(SCHEMAS)})")


def validate_row(row: Mapping, schema: str) -> RowProblem | None:
    """First problem in a canonical row of the given schema, or None."""
    _check_schema(schema)
    return ROW_VALIDATORS[schema](row)


# ----------------------------------------------------------------------------------------------------------------------
# Canonical-row helpers


def _coerce(row: dict) -> dict:
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


def _clean_messages(messages: list) -> list[dict]:
    # Validated messages may carry extra keys (name, tool_calls=None after Arrow unification): keep the contract's two.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _as_messages(value: Any, role: str) -> Any:
    """TRL "standard" values to conversational ones: a string becomes one message, a single dict a one-item list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping):
        return [value]
    return value


def schema_features(schema: str, optional_columns: Iterable[str] = ()):
    """``datasets.Features`` of canonical rows: the schema's required columns plus the given optional ones."""
    from datasets import Features, List, Value

    _check_schema(schema)
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


# ----------------------------------------------------------------------------------------------------------------------
# Adapter registry


@dataclass(frozen=True)
class Adapter:
    """A named converter from one raw row format to canonical rows of ``schema``.

    ``required_columns`` entries are column names or tuples of alternatives (any one suffices). ``detect`` lists
    column sets; the adapter is auto-detected when all columns of one set are present and none of ``exclude`` is.
    ``emits`` names optional schema columns the adapter fills itself (others are copied from the source if present).
    Whole-dataset formats (OASST trees) set ``convert_dataset`` instead of ``convert``.
    """

    name: str
    schema: str
    convert: Callable[[Mapping], dict] | None
    required_columns: tuple = ()
    detect: tuple[frozenset[str], ...] = ()
    exclude: frozenset[str] = frozenset()
    emits: tuple[str, ...] = ()
    priority: int = 100
    description: str = ""
    passthrough: bool = False
    convert_dataset: Callable[..., list[dict]] | None = None

    def matches(self, column_names: Iterable[str]) -> bool:
        columns = set(column_names)
        if columns & self.exclude:
            return False
        return any(needed <= columns for needed in self.detect)

    def missing_columns(self, column_names: Iterable[str]) -> list[str]:
        columns = set(column_names)
        missing = []
        for needed in self.required_columns:
            options = (needed,) if isinstance(needed, str) else tuple(needed)
            if not columns.intersection(options):
                missing.append(" or ".join(f"'{o}'" for o in options))
        return missing


_ADAPTERS: dict[str, Adapter] = {}


def _add_adapter(adapter: Adapter, replace: bool) -> Adapter:
    _check_schema(adapter.schema)
    if adapter.name in _ADAPTERS and not replace:
        raise ValueError(f"adapter '{adapter.name}' is already registered (pass replace=True to override it)")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def register_adapter(
    name: str,
    *,
    schema: str,
    required: Sequence = (),
    detect: Iterable[Iterable[str]] = (),
    exclude: Iterable[str] = (),
    emits: Sequence[str] = (),
    priority: int = 100,
    description: str | None = None,
    passthrough: bool = False,
    replace: bool = False,
):
    """Decorator registering ``fn(raw_row) -> canonical row`` under ``name``; fn raises InvalidRow for bad rows."""

    def decorator(fn: Callable[[Mapping], dict]) -> Callable[[Mapping], dict]:
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _add_adapter(
            Adapter(
                name=name,
                schema=schema,
                convert=fn,
                required_columns=tuple(required),
                detect=tuple(frozenset(columns) for columns in detect),
                exclude=frozenset(exclude),
                emits=tuple(emits),
                priority=priority,
                description=doc,
                passthrough=passthrough,
            ),
            replace,
        )
        return fn

    return decorator


def unregister_adapter(name: str) -> None:
    """Remove a registered adapter (KeyError if unknown); mainly for plugins and tests that register their own."""
    del _ADAPTERS[name]


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset format '{name}' (known formats: {', '.join(list_adapters())})") from None


def _detection_order() -> list[Adapter]:
    order = {name: i for i, name in enumerate(_ADAPTERS)}
    return sorted(_ADAPTERS.values(), key=lambda a: (a.priority, order[a.name]))


def list_adapters(schema: str | None = None) -> list[str]:
    """Registered adapter names (optionally only those producing ``schema``), in auto-detection order."""
    return [a.name for a in _detection_order() if schema is None or a.schema == schema]


def detect_format(column_names: Iterable[str], schema: str | None = None) -> str:
    """Name of the first adapter (by priority) whose detection rule matches the columns, optionally for ``schema``.

    Raises ValueError listing the auto-detectable formats and their columns when nothing matches.
    """
    columns = list(column_names)
    if schema is not None:
        _check_schema(schema)
    for adapter in _detection_order():
        if (schema is None or adapter.schema == schema) and adapter.matches(columns):
            return adapter.name
    known = [
        f"{a.name} [{a.schema}: {' + '.join(sorted(a.detect[0]))}]"
        for a in _detection_order()
        if a.detect and (schema is None or a.schema == schema)
    ]
    target = f" as '{schema}' rows" if schema else ""
    raise ValueError(
        f"cannot detect the dataset format{target} from columns [{', '.join(columns)}]; "
        f"known formats: {'; '.join(known)}; or name a format explicitly (one of {', '.join(list_adapters(schema))})"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Dataset-level normalization


def _convert_row(adapter: Adapter, raw: Mapping, schema: str, optional_columns: Sequence[str]) -> dict:
    row = dict(adapter.convert(raw))
    for column in optional_columns:
        if column not in row:
            row[column] = raw.get(column)
    row = _coerce(row)
    problem = ROW_VALIDATORS[schema](row)
    if problem is not None:
        raise InvalidRow(
            problem.field,
            problem.reason,
            problem.detail,
            after_conversion=None if adapter.passthrough else adapter.name,
        )
    out = {}
    for column in (*REQUIRED_COLUMNS[schema], *optional_columns):
        value = row.get(column)
        out[column] = _clean_messages(value) if column in MESSAGE_LIST_COLUMNS else value
    return out


def normalize_dataset(
    ds,
    source_name: str,
    schema: str,
    adapter: str | None = None,
    skip_invalid: bool = False,
    options: Mapping[str, Any] | None = None,
    extra_columns: Sequence[str] = (),
):
    """Convert ``ds`` to canonical ``schema`` rows with ``adapter`` (auto-detected when None or "auto"), validating.

    Returns ``(dataset, Counter of skipped rows by reason)``. Missing columns are reported before any row is read.
    Without ``skip_invalid`` the first bad row raises DataValidationError ("dataset 'x' row 12, field 'messages[3]
    .role': ..."); with it bad rows are dropped and counted. Columns outside the schema are dropped, except the
    schema's optional columns (see OPTIONAL_COLUMNS) when present. One pass (batched map, never served from cache
    so that the counts are always filled). ``options`` go to whole-dataset formats (oasst: best_only, lang).
    ``extra_columns`` are raw columns carried through unchanged (e.g. a per-pair loss weight a recipe names); a source
    without one is a missing-column error.
    """
    from datasets import Dataset

    _check_schema(schema)
    columns = list(ds.column_names)
    if adapter is None or adapter == "auto":
        try:
            name = detect_format(columns, schema)
        except ValueError as exc:
            raise DataValidationError(source_name, str(exc), reason="unknown format") from None
    else:
        name = adapter
    chosen = get_adapter(name)
    if chosen.schema != schema:
        raise ValueError(
            f"format '{chosen.name}' produces '{chosen.schema}' rows, not '{schema}' (dataset '{source_name}'); "
            "convert afterwards (preference_to_sft, preference_to_unpaired, sft_to_prompt) or pick another format"
        )
    missing = chosen.missing_columns(columns)
    if missing:
        raise DataValidationError(
            source_name,
            f"missing column {', '.join(missing)} required by format '{chosen.name}' "
            f"(columns present: {', '.join(columns) or 'none'})",
            reason="missing column",
        )
    extra_columns = [c for c in extra_columns if c not in REQUIRED_COLUMNS[schema]]
    missing_extra = [c for c in extra_columns if c not in columns]
    if missing_extra:
        raise DataValidationError(
            source_name,
            f"missing column {', '.join(missing_extra)} named by the recipe (columns present: {', '.join(columns)})",
            reason="missing column",
        )
    counts: Counter = Counter()
    if extra_columns and chosen.convert_dataset is not None:
        raise ValueError(f"format '{chosen.name}' rebuilds whole conversations and cannot carry extra columns")
    if options and chosen.convert_dataset is None:
        raise ValueError(f"format '{chosen.name}' takes no options (got {', '.join(options)})")

    if chosen.convert_dataset is not None:
        # Only the tree fields are read; skipping the wide annotation columns (detoxify, labels, emojis) saves time.
        wanted = {"message_id", "parent_id", "role", "text", "lang", "rank", "deleted", "review_result"}
        ds = ds.select_columns([c for c in columns if c in wanted or c == "message_tree_id"])
        rows = chosen.convert_dataset(
            ds, source=source_name, skip_invalid=skip_invalid, counts=counts, **dict(options or {})
        )
        optional = [c for c in OPTIONAL_COLUMNS[schema] if any(c in r for r in rows)]
        features = schema_features(schema, optional)
        return Dataset.from_list([{c: r.get(c) for c in features} for r in rows], features=features), counts

    optional = [c for c in OPTIONAL_COLUMNS[schema] if c in chosen.emits or c in columns]
    features = schema_features(schema, optional)
    for column in extra_columns:
        if column not in features:
            features[column] = ds.features[column]
    if len(ds) == 0:  # datasets' map skips the function (and our features) on empty datasets
        return Dataset.from_dict({column: [] for column in features}, features=features), counts

    def convert_batch(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {column: [] for column in features}
        for j, index in enumerate(indices):
            raw = {column: batch[column][j] for column in columns}
            try:
                row = _convert_row(chosen, raw, schema, optional)
            except InvalidRow as exc:
                problem = exc.problem
                if skip_invalid:
                    counts[problem.reason] += 1
                    continue
                detail = problem.detail
                if exc.after_conversion:
                    detail += f" (after converting with format '{exc.after_conversion}')"
                raise DataValidationError(
                    source_name, detail, row=index, field=problem.field, reason=problem.reason
                ) from None
            for column in features:
                out[column].append(row[column] if column in row else raw[column])
        return out

    result = ds.map(
        convert_batch,
        batched=True,
        with_indices=True,
        remove_columns=columns,
        features=features,
        load_from_cache_file=False,
        desc=f"Normalizing {source_name}",
    )
    return result, counts


# ----------------------------------------------------------------------------------------------------------------------
# Conversions between canonical schemas


def _kept(ds, allowed: Sequence[str]) -> list[str]:
    return [column for column in allowed if column in ds.column_names]


def _map_rows(ds, fn: Callable[[dict, int], list[dict]], schema: str, optional: list[str]):
    """Batched map calling ``fn(row, index)`` for every row; fn returns the output rows (any number)."""
    features = schema_features(schema, optional)
    columns = list(ds.column_names)
    if len(ds) == 0:
        from datasets import Dataset

        return Dataset.from_dict({column: [] for column in features}, features=features)

    def batch_fn(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {column: [] for column in features}
        for j, index in enumerate(indices):
            for row in fn({column: batch[column][j] for column in columns}, index):
                for column in features:
                    out[column].append(row.get(column))
        return out

    return ds.map(
        batch_fn,
        batched=True,
        with_indices=True,
        remove_columns=columns,
        features=features,
        load_from_cache_file=False,
    )


def preference_to_unpaired(ds):
    """Each preference pair -> two unpaired rows (chosen with label True, then rejected with label False)."""
    optional = _kept(ds, OPTIONAL_COLUMNS["unpaired"])

    def fn(row: dict, index: int) -> list[dict]:
        extra = {column: row[column] for column in optional}
        return [
            {"prompt": row["prompt"], "completion": row["chosen"], "label": True, **extra},
            {"prompt": row["prompt"], "completion": row["rejected"], "label": False, **extra},
        ]

    return _map_rows(ds, fn, "unpaired", optional)


def preference_to_sft(ds):
    """Preference rows -> sft rows with messages = prompt + chosen (prompt_id/source kept)."""
    optional = _kept(ds, ("prompt_id", "source"))

    def fn(row: dict, index: int) -> list[dict]:
        return [{"messages": row["prompt"] + row["chosen"], **{c: row[c] for c in optional}}]

    return _map_rows(ds, fn, "sft", optional)


def unpaired_to_sft(ds, desirable_only: bool = True):
    """Unpaired rows -> sft rows with messages = prompt + completion; by default only rows labelled True."""
    optional = _kept(ds, ("prompt_id", "source"))

    def fn(row: dict, index: int) -> list[dict]:
        if desirable_only and not row["label"]:
            return []
        return [{"messages": row["prompt"] + row["completion"], **{c: row[c] for c in optional}}]

    return _map_rows(ds, fn, "sft", optional)


def sft_to_prompt(ds, source_name: str = "dataset"):
    """Sft rows -> prompt rows: the final assistant turn is dropped and kept as "reference" (prompt_id/source kept)."""
    optional = [*_kept(ds, ("prompt_id",)), "reference", *_kept(ds, ("source",))]
    kept = [c for c in optional if c != "reference"]

    def fn(row: dict, index: int) -> list[dict]:
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            last = messages[-1]["role"] if messages else "nothing"
            raise DataValidationError(
                source_name,
                f"must end with 'assistant', got '{last}'",
                row=index,
                field=f"messages[{max(len(messages) - 1, 0)}].role",
                reason="bad last turn",
            )
        return [{"prompt": messages[:-1], "reference": messages[-1]["content"], **{c: row[c] for c in kept}}]

    return _map_rows(ds, fn, "prompt", optional)


# ----------------------------------------------------------------------------------------------------------------------
# Built-in adapters

# Importing formatting must be enough for get_adapter, list_adapters, detect_format and normalize_dataset to know the
# built-in formats, so their module is imported (and registers them) here. It has to stay at the very end: adapters
# imports names from this module (an import cycle), which are all defined by now, whichever module is imported first.
from chatalign import adapters as _builtin_adapters  # noqa: E402, F401
