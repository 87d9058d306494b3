"""The recipe keys of the data layer, shared by every training script."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataArguments:
    """Which data to train on and how to mix, format and render it (shared by every training script)."""

    dataset_mixer: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Sources and weights: {source: 0.5 | 2 | {fraction: f} | {size: n}, ...}. A source is a hub id, a "
            "local file (jsonl, json, parquet, csv), a folder of such files or a save_to_disk folder."
        },
    )
    dataset_splits: list[str] = field(
        default_factory=lambda: ["train", "test"],
        metadata={"help": "Splits to take: train* splits are mixed into the training set, test* into the test set."},
    )
    test_split_size: float | None = field(
        default=None,
        metadata={"help": "Carve a test split (a fraction, or a row count if >= 1) off sources that have none."},
    )
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "Adapter for every source (alpaca, sharegpt, ultrachat, ...); default: detected per source."},
    )
    dataset_filter: dict[str, Any] | None = field(
        default=None, metadata={"help": "Keep only rows whose columns equal these values, e.g. {source: evol_instruct}."}
    )
    dedup_column: str | None = field(
        default=None, metadata={"help": "Drop rows whose value in this column (e.g. prompt_id) was already seen."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Cap every split at this many rows (quick runs)."})
    skip_invalid: bool = field(
        default=False,
        metadata={"help": "Skip malformed rows (counted and logged by reason) instead of stopping at the first one."},
    )
    resample_each_epoch: bool = field(
        default=False,
        metadata={"help": "Draw fractional/sized sources afresh every epoch (same subset on every rank)."},
    )
    show_dataset_stats: bool = field(default=False, metadata={"help": "Print a per-source table before training."})
    chat_template: str | None = field(
        default=None,
        metadata={"help": "A shipped template name, a .jinja file, an SGLang-style .json file, or a jinja string."},
    )
