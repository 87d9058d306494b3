"""The recipe keys of the data layer, shared by every training script."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml


def parse_splits(value: Any) -> list[str] | dict[str, list[str]]:
    """dataset_splits as a list of split names, or a mapping {source: [split names]} (LION's mixing form).

    A string is a YAML list or mapping, or comma-separated names (``train,test``).
    """
    if isinstance(value, str):
        parsed = yaml.safe_load(value) if value.strip().startswith(("[", "{")) else None
        value = parsed if parsed is not None else [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("dataset_splits is an empty mapping: give {source: [splits]} for every mixer source")
        return {str(source): _split_names(splits, f"dataset_splits['{source}']") for source, splits in value.items()}
    return _split_names(value, "dataset_splits")


def _split_names(value: Any, where: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where} must be a split name or a non-empty list of split names, got {value!r}")
    return list(names)


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
    dataset_splits: Any = field(
        default_factory=lambda: ["train", "test"],
        metadata={"help": "Splits to take: train* splits are mixed into the training set, test* into the test set. A "
                          "list for every source, or {source: [splits]} per source (e.g. {uf: [train_prefs, "
                          "test_prefs], argilla/x: [train]})."},
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
    auto_insert_empty_system_msg: bool = field(
        default=False,
        metadata={"help": "Give every conversation without a system message an empty one, when the chat template "
                          "renders system messages (alignment-handbook's and LION's zephyr recipes do)."},
    )

    def __post_init__(self):
        self.dataset_splits = parse_splits(self.dataset_splits)
