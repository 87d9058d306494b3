"""Per-source row counts of a mix through every step of the pipeline, and a readable table of them."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from chatalign.data.sources import TEST, TRAIN, split_base

logger = logging.getLogger(__name__)


# Columns holding the conversation a row trains on (for turn and token statistics), per canonical schema.
_CONVERSATION_COLUMNS = ("messages", "prompt", "chosen", "completion")


@dataclass
class SourceStats:
    """Row counts of one (source, split) through the pipeline, plus optional token statistics of its final rows."""

    source: str
    split: str
    available: int = 0
    after_filter: int = 0
    skipped: Counter = field(default_factory=Counter)
    valid: int = 0  # rows after normalisation (and schema conversion, which may change the count)
    to_test: int = 0  # rows carved off into the test set (test_split_size)
    carved_from: str | None = None  # for a carved test split: the train split it came from
    dedup_dropped: int = 0
    sampled: int = 0  # rows drawn (per epoch when resampling)
    final: int = 0  # rows in the mixed split after max_samples (for epoch 0 when resampling)
    mean_turns: float | None = None
    mean_tokens: float | None = None
    max_tokens: int | None = None

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def pool(self) -> int:
        """Rows left to sample from: valid, not carved off, not duplicates."""
        return self.valid - self.to_test - self.dedup_dropped


@dataclass
class MixStats:
    """Per-(source, split) statistics of one mix, in mixer order."""

    rows: list[SourceStats] = field(default_factory=list)
    resampled_each_epoch: bool = False

    def get(self, source: str, split: str) -> SourceStats:
        for row in self.rows:
            if row.source == source and row.split == split:
                return row
        raise KeyError(f"no statistics for source '{source}' split '{split}'")

    def add(self, source: str, split: str) -> SourceStats:
        row = SourceStats(source, split)
        self.rows.append(row)
        return row

    def to_records(self) -> list[dict[str, Any]]:
        """Plain dicts (e.g. to log to a tracker or dump as JSON)."""
        return [
            {
                "source": r.source,
                "split": r.split,
                "available": r.available,
                "after_filter": r.after_filter,
                "skipped": dict(r.skipped),
                "valid": r.valid,
                "to_test": r.to_test,
                "dedup_dropped": r.dedup_dropped,
                "sampled": r.sampled,
                "final": r.final,
                "mean_turns": r.mean_turns,
                "mean_tokens": r.mean_tokens,
                "max_tokens": r.max_tokens,
            }
            for r in self.rows
        ]


# (header, SourceStats attribute) of the count columns, in pipeline order.
_COUNT_COLUMNS = (
    ("available", "available"),
    ("filtered", "after_filter"),
    ("skipped", "n_skipped"),
    ("valid", "valid"),
    ("to_test", "to_test"),
    ("dedup", "dedup_dropped"),
    ("sampled", "sampled"),
    ("final", "final"),
)


def format_stats_table(stats: MixStats) -> str:
    """A readable, column-aligned table of `stats`: one line per source and split, a total per mixed split.

    Columns: rows available, after the filter, skipped as invalid, valid after normalisation, carved off to the test
    set, dropped as duplicates, sampled and final (after max_samples); with a tokenizer also mean turns and
    mean/max tokens per final row. Skipped rows are listed by reason below the table.
    """
    with_tokens = any(r.mean_tokens is not None for r in stats.rows)
    header = ["source", "split", *(h for h, _ in _COUNT_COLUMNS)]
    if with_tokens:
        header += ["turns", "tok_mean", "tok_max"]
    lines: list[list[str]] = []
    for kind in (TRAIN, TEST):
        group = [r for r in stats.rows if split_base(r.split) == kind]
        for r in group:
            split = f"{r.split}<-{r.carved_from}" if r.carved_from else r.split
            line = [r.source, split, *(str(getattr(r, attr)) for _, attr in _COUNT_COLUMNS)]
            if with_tokens:
                line += [_num(r.mean_turns), _num(r.mean_tokens), "-" if r.max_tokens is None else str(r.max_tokens)]
            lines.append(line)
        if group:
            total = ["TOTAL", kind, *(str(sum(getattr(r, attr) for r in group)) for _, attr in _COUNT_COLUMNS)]
            lines.append(total + [""] * (len(header) - len(total)))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = [
        "  ".join(_cell(v, w, i < 2) for i, (v, w) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in [header, *lines]
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    reasons = [(r, reason, n) for r in stats.rows for reason, n in sorted(r.skipped.items())]
    if reasons:
        out.append("skipped rows by reason:")
        out += [f"  {r.source} [{r.split}] {reason}: {n}" for r, reason, n in reasons]
    if stats.resampled_each_epoch:
        out.append("train sources are redrawn every epoch: 'sampled' is per epoch, 'final' is epoch 0")
    return "\n".join(out)


def _cell(value: str, width: int, left: bool) -> str:
    return value.ljust(width) if left else value.rjust(width)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def log_stats(stats: MixStats, log: logging.Logger | None = None) -> None:
    """Log the statistics table at INFO level."""
    (log or logger).info("dataset mix:\n%s", format_stats_table(stats))


def _conversation_of(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # The conversation a row trains on: messages (sft), prompt + chosen (preference), prompt + completion (unpaired).
    turns: list[Mapping[str, Any]] = []
    for column in _CONVERSATION_COLUMNS:
        value = row.get(column)
        if isinstance(value, list):
            turns.extend(m for m in value if isinstance(m, Mapping))
    return turns


def token_stats(dataset: datasets.Dataset, tokenizer: Any, batch_size: int = 1024) -> tuple[float, float, int]:
    """Mean turns, mean tokens and max tokens per row; tokens of the concatenated message contents (no template)."""
    turns: list[int] = []
    tokens: list[int] = []
    columns = [c for c in _CONVERSATION_COLUMNS if c in dataset.column_names]
    if not columns:
        return 0.0, 0.0, 0
    conversation_columns = dataset.select_columns(columns)
    for start in range(0, len(dataset), batch_size):
        batch = conversation_columns[start : start + batch_size]
        rows = [dict(zip(columns, values, strict=True)) for values in zip(*(batch[c] for c in columns), strict=True)]
        conversations = [_conversation_of(row) for row in rows]
        turns += [len(c) for c in conversations]
        texts = ["\n".join(str(m.get("content") or "") for m in c) for c in conversations]
        if texts:
            tokens += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if not turns:
        return 0.0, 0.0, 0
    return float(np.mean(turns)), float(np.mean(tokens)), int(max(tokens))
