"""Whole datasets to canonical rows: an adapter plus validation in one pass, and conversions between schemas.

:func:`normalize_dataset` runs an adapter plus validation over a ``datasets.Dataset`` in one pass, either stopping at
the first bad row with a :class:`~chatalign.data.schemas.DataValidationError` that names the dataset, the row (0-based,
as in ``ds[i]``) and the field, or (``skip_invalid=True``) dropping bad rows and counting them by a short, stable
reason key (:data:`~chatalign.data.schemas.SKIP_REASONS`). The conversions (``preference_to_sft`` and the others) turn
canonical rows of one schema into another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chatalign.data.registry import Adapter, detect_format, get_adapter
from chatalign.data.schemas import (
    MESSAGE_LIST_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ROW_VALIDATORS,
    DataValidationError,
    InvalidRow,
    check_schema,
    clean_messages,
    coerce_row,
    schema_features,
)


def _convert_row(adapter: Adapter, raw: Mapping, schema: str, optional_columns: Sequence[str]) -> dict:
    row = dict(adapter.convert(raw))
    for column in optional_columns:
        if column not in row:
            row[column] = raw.get(column)
    row = coerce_row(row)
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
        out[column] = clean_messages(value) if column in MESSAGE_LIST_COLUMNS else value
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

    check_schema(schema)
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
            "convert afterwards (preference_to_sft, preference_to_unpaired, preference_to_prompt, sft_to_prompt) or pick another format"
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


def preference_to_prompt(ds):
    """Preference rows -> prompt rows: the prompt, with the chosen reply's text as `reference` (prompt_id/source
    kept), e.g. for RL prompts from a preference set."""
    optional = [*_kept(ds, ("prompt_id",)), "reference", *_kept(ds, ("source",))]
    kept = [c for c in optional if c != "reference"]

    def fn(row: dict, index: int) -> list[dict]:
        return [{"prompt": row["prompt"], "reference": row["chosen"][-1]["content"], **{c: row[c] for c in kept}}]

    return _map_rows(ds, fn, "prompt", optional)


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
