"""Mixing training data: the handbook's ``get_datasets`` grown up.

``mix_datasets`` loads every source of a ``dataset_mixer`` (:mod:`chatalign.data.sources`), filters it, normalises it
to one canonical schema (:mod:`chatalign.data.normalize`), deduplicates, samples it by its weight
(:mod:`chatalign.data.sampling`) and concatenates the sources into one train set and one test set, recording
per-source counts in ``MixStats`` (:mod:`chatalign.data.stats`).

Order of operations per source and split (each step is counted in ``MixStats``):
    load -> filter -> normalise (skip invalid) -> carve test rows (test_split_size) -> dedup -> sample -> shuffle -> cap
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from chatalign.data.adapters.translation import translation_corpus
from chatalign.data.arguments import parse_splits
from chatalign.data.normalize import (
    normalize_dataset,
    preference_to_prompt,
    preference_to_sft,
    preference_to_unpaired,
    sft_to_prompt,
)
from chatalign.data.registry import detect_format, get_adapter
from chatalign.data.sampling import EPS, EpochResampledDataset, SampleSize, SourceSpec, parse_mixer, row_groups
from chatalign.data.schemas import REQUIRED_COLUMNS
from chatalign.data.sources import TEST, TRAIN, MissingSplitError, load_source, looks_like_path, split_base
from chatalign.data.stats import MixStats, SourceStats, token_stats
from chatalign.store import seeded_rng

logger = logging.getLogger(__name__)


@dataclass
class MixedData:
    """The mixed train and test sets (None when not requested), their statistics, and the per-epoch sampler."""

    train: datasets.Dataset | None
    test: datasets.Dataset | None
    stats: MixStats
    train_resampled: EpochResampledDataset | None = None  # set when resample_each_epoch; `train` is its epoch 0

    def to_dataset_dict(self) -> datasets.DatasetDict:
        return datasets.DatasetDict({k: v for k, v in ((TRAIN, self.train), (TEST, self.test)) if v is not None})


def mix_datasets(
    dataset_mixer: Mapping[str, Any],
    schema: str,
    splits: Sequence[str] | Mapping[str, Sequence[str]] = (TRAIN, TEST),
    test_split_size: float | int | None = None,
    seed: int = 42,
    dataset_filter: Mapping[str, Any] | None = None,
    columns_to_keep: Sequence[str] | None = None,
    dedup_column: str | None = None,
    max_samples: int | None = None,
    skip_invalid: bool = False,
    dataset_format: str | None = None,
    tokenizer: Any = None,
    resample_each_epoch: bool = False,
    shuffle: bool = True,
    extra_columns: Sequence[str] = (),
    group_column: str | None = None,
) -> MixedData:
    """Load, filter, normalise to `schema`, dedup, sample and concatenate every source of `dataset_mixer`.

    - weights: a number (fraction of the rows; > 1 repeats whole copies plus a seeded remainder) or
      {fraction: f} | {size: n} with optional per-source {format, filter, split_map}. size > available is an error.
    - splits: names starting with "train" are sampled by weight into the train set; "test*" splits are taken whole.
      One list for every source, or a mapping {source: [splits]} (LION's form) naming every source's own.
    - test_split_size: for sources lacking a requested test split (or, with no test split requested, a "test" split),
      carve this many rows (fraction if < 1, else a row count) off the matching train split, seeded.
    - dataset_filter (global) and per-source filter: keep rows whose raw column equals the value (or is in the list).
    - dedup_column: drop rows whose value was already seen in an earlier source/row of the same mixed split, before
      sampling (so deliberate repeats survive).
    - max_samples: keep the first n rows of each shuffled mixed split.
    - resample_each_epoch: also return ``train_resampled``, which redraws fractions/sizes every epoch.
    - extra_columns: raw columns every source must have and that are kept as they are (e.g. a loss weight).
    - group_column: rows sharing a value of this column (the real and generated rows of a self-play prompt_id) are
      selected, carved off and capped together: fractions, sizes and max_samples count groups, not rows.
    """
    sources = check_mixer(dataset_mixer)
    routes = _route_per_source(splits, sources, test_split_size)
    carve = _parse_test_split_size(test_split_size)
    _check_positive("max_samples", max_samples)
    if group_column is not None and resample_each_epoch:
        raise ValueError(f"resample_each_epoch cannot redraw whole groups of rows (by {group_column}): the grouped "
                         "draw is made once")
    stats = MixStats(resampled_each_epoch=resample_each_epoch)

    # Per mixed split (train, test): pools keyed by a label unique per (source, split), in mixer order.
    pools: dict[str, dict[str, datasets.Dataset]] = {TRAIN: {}, TEST: {}}
    sizes: dict[str, dict[str, SampleSize]] = {TRAIN: {}, TEST: {}}
    pool_stats: dict[str, dict[str, SourceStats]] = {TRAIN: {}, TEST: {}}
    for source in sources:
        train_splits, test_splits = routes[source.name]
        row_filter = {**(dataset_filter or {}), **(source.filter or {})}
        prepare = functools.partial(
            _prepare, source, schema=schema, row_filter=row_filter, skip_invalid=skip_invalid,
            dataset_format=dataset_format, stats=stats, extra_columns=tuple(extra_columns),
        )  # fmt: skip
        loaded: dict[str, datasets.Dataset] = {}
        for split in train_splits:
            loaded[split] = prepare(split)
        for split in test_splits:
            try:
                loaded[split] = prepare(split)
            except MissingSplitError as err:
                if carve is None:
                    raise MissingSplitError(
                        f"{err}; set test_split_size to carve a test split off its train split, or drop '{split}' "
                        "from the requested splits"
                    ) from None
                loaded.update(_carve_test(source, split, train_splits, loaded, carve, seed, prepare, stats,
                                          group_column))
        for kind, group, sample in ((TRAIN, train_splits, source.sample), (TEST, test_splits, SampleSize(1.0))):
            for split in group:  # test splits are taken whole, as in the handbook
                label = _label(source.name, split, group)
                pools[kind][label], sizes[kind][label] = loaded[split], sample
                pool_stats[kind][label] = stats.get(source.name, split)

    mixed: dict[str, EpochResampledDataset | None] = {TRAIN: None, TEST: None}
    for kind in (TRAIN, TEST):
        if not pools[kind]:
            continue
        if dedup_column:
            _dedup(pools[kind], dedup_column, pool_stats[kind])
        for label, pool in pools[kind].items():
            pools[kind][label] = _finish_pool(pool, pool_stats[kind][label].source, schema, columns_to_keep)
            if not len(pool):
                row = pool_stats[kind][label]
                logger.warning(
                    "dataset '%s' split '%s': no rows left after filtering/validation", row.source, row.split
                )
        mixed[kind] = EpochResampledDataset(
            pools[kind], sizes[kind], seed, epoch=0, max_samples=max_samples, shuffle=shuffle, key=kind,
            group_column=group_column,
        )
        _record_final(mixed[kind], pool_stats[kind], tokenizer)
    train, test = (mixed[k].materialize(0) if mixed[k] is not None else None for k in (TRAIN, TEST))
    return MixedData(train, test, stats, mixed[TRAIN] if resample_each_epoch else None)


def check_mixer(dataset_mixer: Mapping[str, Any]) -> list[SourceSpec]:
    """The mixer's sources, validated before anything is loaded: specs, mistyped local paths (not taken for hub
    ids), and a mix that would draw nothing at all."""
    sources = parse_mixer(dataset_mixer)
    for source in sources:  # fail on a mistyped path before spending minutes loading the sources before it
        if looks_like_path(source.name) and not Path(source.name).expanduser().exists():
            raise FileNotFoundError(f"dataset '{source.name}': no such file or folder")
        translation_corpus(source.name)  # wmt2019_<pair> / ted_trans_<pair>: a pair it lacks fails here
    if all(s.sample.fraction == 0 or s.sample.size == 0 for s in sources):
        weights = ", ".join(f"'{s.name}': {s.sample.size if s.sample.size is not None else s.sample.fraction:g}"
                            for s in sources)
        raise ValueError(f"dataset_mixer draws no row from any source ({weights}): give a source a weight above 0")
    return sources


def _route_per_source(splits: Sequence[str] | Mapping[str, Sequence[str]], sources: list[SourceSpec],
                      test_split_size: Any) -> dict[str, tuple[list[str], list[str]]]:
    """(train splits, test splits) of every source: the same list for all, or each source's own from a mapping."""
    splits = parse_splits(splits)
    if not isinstance(splits, Mapping):
        return {source.name: _route_splits(splits, test_split_size) for source in sources}
    names = [source.name for source in sources]
    for name in splits:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"dataset_splits names '{name}', which is not a dataset_mixer source{hint}")
    missing = [name for name in names if name not in splits]
    if missing:
        raise ValueError(f"dataset_splits is a mapping but has no splits for dataset_mixer source(s) "
                         f"{', '.join(repr(m) for m in missing)}")
    return {name: _route_splits(splits[name], test_split_size) for name in names}


def _route_splits(splits: Sequence[str], test_split_size: Any) -> tuple[list[str], list[str]]:
    if isinstance(splits, str):
        splits = [splits]
    bad = [s for s in splits if split_base(s) not in (TRAIN, TEST)]
    if bad:
        raise ValueError(f"dataset_splits {bad}: every split must start with 'train' or 'test'")
    train_splits = list(dict.fromkeys(s for s in splits if split_base(s) == TRAIN))
    test_splits = list(dict.fromkeys(s for s in splits if split_base(s) == TEST))
    if not test_splits and test_split_size is not None:
        test_splits = [TEST]  # asking for a carved test set implies one
    return train_splits, test_splits


def _parse_test_split_size(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or not math.isfinite(value):
        raise ValueError(f"test_split_size must be a fraction in (0, 1) or a row count >= 1, got {value!r}")
    if value < 1:
        return float(value)
    if int(value) != value:
        raise ValueError(f"test_split_size >= 1 is a row count and must be whole, got {value}")
    return int(value)


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")


def _label(source: str, split: str, group: list[str]) -> str:
    # One pool per source when a single split feeds the mixed split; qualify by split when several do.
    return source if len(group) == 1 else f"{source}:{split}"


def _prepare(
    source: SourceSpec,
    split: str,
    *,
    schema: str,
    row_filter: Mapping[str, Any],
    skip_invalid: bool,
    dataset_format: str | None,
    stats: MixStats,
    extra_columns: tuple[str, ...] = (),
) -> datasets.Dataset:
    """Load, filter and normalise one split of one source, recording counts."""
    corpus = translation_corpus(source.name)  # Open-Assistant's names for the WMT19 / TED Talks hub corpora
    raw = corpus.load(source.source_split(split)) if corpus else load_source(source.name, source.source_split(split))
    row = stats.add(source.name, split)
    row.available = len(raw)
    raw = _apply_filter(raw, row_filter, source.name, split)
    row.after_filter = len(raw)
    normalised, skipped = _normalise(raw, source, schema, skip_invalid, dataset_format, extra_columns)
    row.skipped.update(skipped)
    row.valid = len(normalised)
    return normalised


def _apply_filter(dataset: datasets.Dataset, row_filter: Mapping[str, Any], name: str, split: str) -> datasets.Dataset:
    if not row_filter:
        return dataset
    missing = [c for c in row_filter if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset '{name}' split '{split}': filter column(s) {missing} not found "
            f"(columns: {', '.join(dataset.column_names)})"
        )
    wanted = {c: set(v) if isinstance(v, (list, tuple, set)) else {v} for c, v in row_filter.items()}
    columns = list(wanted)

    def keep(*values):
        return [all(v in wanted[c] for c, v in zip(columns, row, strict=True)) for row in zip(*values, strict=True)]

    return dataset.filter(keep, input_columns=columns, batched=True, desc=f"filter {name}")


def _normalise(
    raw: datasets.Dataset, source: SourceSpec, schema: str, skip_invalid: bool, dataset_format: str | None,
    extra_columns: tuple[str, ...] = (),
) -> tuple[datasets.Dataset, Counter]:
    """Normalise to `schema`, converting from the source's own schema where a lossless-enough conversion exists."""
    adapter = source.format or dataset_format
    native = _native_schema(raw.column_names, schema, adapter)
    convert = _conversion(native, schema)
    if convert is None:
        # Same schema, or no conversion: normalize_dataset reports the mismatch / undetectable format itself.
        return normalize_dataset(raw, source.name, schema, adapter=adapter, skip_invalid=skip_invalid,
                                            extra_columns=extra_columns)
    if extra_columns:
        raise ValueError(f"dataset '{source.name}' is {native} data converted to {schema}: extra columns "
                         f"({', '.join(extra_columns)}) are only carried through unconverted sources")
    normalised, skipped = normalize_dataset(
        raw, source.name, native, adapter=adapter, skip_invalid=skip_invalid
    )
    return convert(normalised), skipped


def _native_schema(columns: list[str], schema: str, adapter: str | None) -> str | None:
    """The schema the source's rows are in: its adapter's, else `schema` when detectable as such, else any detected."""
    if adapter is not None and adapter != "auto":
        return get_adapter(adapter).schema
    for wanted in (schema, None):
        try:
            return get_adapter(detect_format(columns, wanted)).schema
        except ValueError:
            continue
    return None


def _conversion(native: str | None, schema: str) -> Callable | None:
    conversions = {
        ("preference", "unpaired"): preference_to_unpaired,
        ("preference", "sft"): preference_to_sft,
        ("sft", "prompt"): sft_to_prompt,
        ("preference", "prompt"): preference_to_prompt,
    }
    return conversions.get((native, schema))


def _carve_test(
    source: SourceSpec,
    test_split: str,
    train_splits: list[str],
    loaded: dict[str, datasets.Dataset],
    carve: float | int,
    seed: int,
    prepare: Callable[[str], datasets.Dataset],
    stats: MixStats,
    group_column: str | None = None,
) -> dict[str, datasets.Dataset]:
    """Split rows off the train split matching `test_split` (test_sft <- train_sft, else the first train split); with
    `group_column`, whole groups of rows (test_split_size then counts groups)."""
    parent = TRAIN + test_split[len(TEST) :]
    if parent not in train_splits:
        parent = train_splits[0] if train_splits else parent
    if parent in loaded:
        pool = loaded[parent]
    else:  # no train split requested from this source: load one just to carve from
        pool = prepare(parent)
    parent_stats = stats.get(source.name, parent)
    if parent_stats.to_test:
        raise ValueError(f"dataset '{source.name}': two test splits would be carved off '{parent}'; request only one")
    units = row_groups(pool, group_column, source.name) if group_column else [np.array([i]) for i in range(len(pool))]
    n_test = math.ceil(carve * len(units) - EPS) if isinstance(carve, float) else carve
    if n_test >= len(units):
        what = f"groups of rows by {group_column}" if group_column else "rows"
        raise ValueError(
            f"dataset '{source.name}': test_split_size {carve} leaves no training rows in '{parent}' ({len(units)} "
            f"{what})"
        )
    order = seeded_rng(seed, source.name, parent, "test_split").permutation(len(units))
    test_rows = np.sort(np.concatenate([units[k] for k in order[:n_test]]))
    train_rows = np.sort(np.concatenate([units[k] for k in order[n_test:]]))
    n_test = len(test_rows)
    parent_stats.to_test = n_test
    carved = stats.add(source.name, test_split)
    carved.available = carved.after_filter = carved.valid = n_test
    carved.carved_from = parent
    out = {test_split: pool.select(test_rows)}
    if parent in loaded:
        out[parent] = pool.select(train_rows)
    return out


def _dedup(pools: dict[str, datasets.Dataset], column: str, pool_stats: dict[str, SourceStats]) -> None:
    seen: set = set()
    for label, pool in pools.items():
        if column not in pool.column_names:
            raise ValueError(
                f"dataset '{pool_stats[label].source}' split '{pool_stats[label].split}': dedup column '{column}' "
                f"not found after normalisation (columns: {', '.join(pool.column_names)})"
            )
        keep = []
        for index, value in enumerate(pool[column]):
            key = value if isinstance(value, (str, int, float, type(None))) else json.dumps(value, sort_keys=True)
            if key not in seen:
                seen.add(key)
                keep.append(index)
        dropped = len(pool) - len(keep)
        if dropped:
            pools[label] = pool.select(keep)
            pool_stats[label].dedup_dropped = dropped


def _finish_pool(
    pool: datasets.Dataset, source: str, schema: str, columns_to_keep: Sequence[str] | None
) -> datasets.Dataset:
    if "source" not in pool.column_names:
        pool = pool.add_column("source", [source] * len(pool))
    if columns_to_keep is not None:
        keep = set(columns_to_keep) | set(REQUIRED_COLUMNS[schema]) | {"source"}
        pool = pool.remove_columns([c for c in pool.column_names if c not in keep])
    return pool


def _record_final(mixed: EpochResampledDataset, pool_stats: dict[str, SourceStats], tokenizer: Any) -> None:
    counts = mixed.counts_per_source()
    for label in mixed.names:
        row = pool_stats[label]
        row.sampled = mixed.rows_per_source[label]
        row.final = counts[label]
    if tokenizer is None:
        return
    origin = np.searchsorted(mixed.offsets, mixed._indices, side="right") - 1
    for i, label in enumerate(mixed.names):
        rows = mixed._indices[origin == i]
        if len(rows):
            row = pool_stats[label]
            row.mean_turns, row.mean_tokens, row.max_tokens = token_stats(mixed.pool.select(rows), tokenizer)


def load_split_rows(name: str, split: str, schema: str, limit: int = -1, skip_invalid: bool = True,
                    dataset_format: str | None = None, shuffle: bool = False, seed: int = 42) -> tuple[list[dict], int]:
    """(rows, malformed rows skipped) of one dataset's split in `schema`: the first `limit` rows (-1: all; seeded
    when `shuffle`), for scripts that read one dataset rather than a training mixture. Malformed rows are skipped and
    counted (`skip_invalid`), or are an error naming them."""
    mixed = mix_datasets({name: {"fraction": 1.0, "split_map": {TRAIN: split}}}, schema, splits=[TRAIN],
                         skip_invalid=skip_invalid, dataset_format=dataset_format, shuffle=shuffle, seed=seed)
    skipped = sum(sum(s.skipped.values()) for s in mixed.stats.rows)
    if skipped:
        logger.warning("%s: %d malformed rows skipped", name, skipped)
    data = mixed.train
    if limit > 0:
        data = data.select(range(min(limit, len(data))))
    return list(data), skipped
