"""Loading, mixing and subsampling training data: the handbook's ``get_datasets`` grown up.

A *source* is a hub id, a local file (.jsonl/.json/.parquet/.csv), a folder of such files, or a ``save_to_disk``
folder. ``mix_datasets`` loads every source of a ``dataset_mixer``, filters it, normalises it to one canonical schema
(``chatalign.formatting``), deduplicates, samples it by its weight and concatenates the sources into one train set and
one test set, recording per-source counts in ``MixStats``.

Sampling is a pure function of (seed, source, split, epoch): no global RNG is touched, so every rank of a distributed
run draws the same rows, and ``EpochResampledDataset`` can draw a fresh subset each epoch (Open-Assistant style).

Order of operations per source and split (each step is counted in ``MixStats``):
    load -> filter -> normalise (skip invalid) -> carve test rows (test_split_size) -> dedup -> sample -> shuffle -> cap
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback

from chatalign import formatting

logger = logging.getLogger(__name__)

# File extension -> packaged `datasets` builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Metadata files that sit next to data files (HF save_to_disk, LLaMA-Factory's dataset registry): never rows.
_METADATA_FILES = {"dataset_info.json", "dataset_dict.json", "state.json"}
# A split named in a file stem: a base word, optionally qualified (train_prefs, test_sft), not part of a longer word.
_SPLIT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])((?:train|test|validation|valid|val|dev|eval)(?:_[A-Za-z]+)*)(?![A-Za-z0-9])"
)

TRAIN, TEST = "train", "test"
SPEC_KEYS = ("fraction", "size", "format", "filter", "split_map")
# Columns holding the conversation a row trains on (for turn and token statistics), per canonical schema.
_CONVERSATION_COLUMNS = ("messages", "prompt", "chosen", "completion")
# Guards floor() against binary fractions: 0.29 * 100 == 28.999999999999996 must give 29 rows.
_EPS = 1e-9


class MissingSplitError(ValueError):
    """A source has no split of the requested name; the message lists the splits it has."""


# --------------------------------------------------------------------------------------------------------------------
# Loading one source


def load_source(spec: str, split: str) -> datasets.Dataset:
    """Load split `split` of a source: hub id, local data file, folder of data files, or save_to_disk folder.

    Local sources name their splits by file name (``train_prefs.jsonl``, ``test-00000-of-00001.parquet``); a file or
    folder whose names carry no split is one ``train`` split. A request for ``train_sft`` is served by a split named
    exactly so, else by a generic ``train`` split; a generic request (``train``) by the only ``train_*`` split.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local(path, spec, split)
    if _looks_like_path(spec):
        raise FileNotFoundError(f"dataset '{spec}': no such file or folder")
    return _load_hub(spec, split)


def local_splits(spec: str) -> list[str]:
    """The split names a local source offers (sorted)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset '{spec}': no such file or folder")
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return sorted(datasets.load_from_disk(str(path)).keys())
    if path.is_dir() and (path / "state.json").exists():
        return [_saved_dataset_split(datasets.load_from_disk(str(path)))]
    return sorted(_files_by_split(path, spec))


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path, not a hub id.
    return (
        spec.startswith((".", "/", "~"))
        or Path(spec).suffix.lower() in FILE_BUILDERS
        or spec.count("/") > 1
        or "\\" in spec
    )


def _load_hub(spec: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec, split=split)
    except ValueError as err:  # datasets: 'Unknown split "x". Should be one of [...]' or 'Bad split: x. Available ...'
        if "Unknown split" in str(err) or "Bad split" in str(err):
            raise MissingSplitError(f"dataset '{spec}' has no split '{split}': {err}") from err
        raise


def _load_local(path: Path, spec: str, split: str) -> datasets.Dataset:
    if path.is_dir() and (path / "dataset_dict.json").exists():
        dataset_dict = datasets.load_from_disk(str(path))
        chosen = _resolve_split(split, list(dataset_dict.keys()), spec)
        return dataset_dict[chosen]
    if path.is_dir() and (path / "state.json").exists():
        dataset = datasets.load_from_disk(str(path))
        _resolve_split(split, [_saved_dataset_split(dataset)], spec)
        return dataset
    files = _files_by_split(path, spec)
    chosen = _resolve_split(split, list(files), spec)
    return _read_files(files[chosen], spec)


def _saved_dataset_split(dataset: datasets.Dataset) -> str:
    # A Dataset saved from load_dataset(..., split="test[:10%]") remembers its split; one built in memory does not.
    return str(dataset.split).split("[")[0] if dataset.split else TRAIN


def split_named_in(file_name: str) -> str | None:
    """The split a data file's name declares (``ultrafeedback_train_prefs.jsonl`` -> ``train_prefs``), else None."""
    stem = file_name[: -len(Path(file_name).suffix)] if Path(file_name).suffix else file_name
    match = _SPLIT_IN_NAME.search(stem)
    return match.group(1) if match else None


def _files_by_split(path: Path, spec: str) -> dict[str, list[Path]]:
    if path.is_file():
        if path.suffix.lower() not in FILE_BUILDERS:
            raise ValueError(f"dataset '{spec}': unsupported file type '{path.suffix}' (expected {_extensions()})")
        return {split_named_in(path.name) or TRAIN: [path]}
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FILE_BUILDERS
        and p.name not in _METADATA_FILES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(
            f"dataset '{spec}': folder holds no data files ({_extensions()}) and is no save_to_disk folder"
        )
    by_split: dict[str, list[Path]] = {}
    for file in files:
        # The file name decides; else the nearest folder inside the source that names a split (data/test/0.parquet).
        names = [file.name, *reversed(file.relative_to(path).parts[:-1])]
        split = next((s for s in map(split_named_in, names) if s), TRAIN)
        by_split.setdefault(split, []).append(file)
    return by_split


def _extensions() -> str:
    return ", ".join(FILE_BUILDERS)


def _base(split: str) -> str:
    return split.split("_")[0]


def _resolve_split(requested: str, available: list[str], spec: str) -> str:
    if requested in available:
        return requested
    if _base(requested) in available:  # train_sft served by a plain "train" split
        return _base(requested)
    if requested == _base(requested):  # plain "test" served by the only test_* split
        qualified = [s for s in available if _base(s) == requested]
        if len(qualified) == 1:
            return qualified[0]
    raise MissingSplitError(
        f"dataset '{spec}' has no split '{requested}' (available: {', '.join(sorted(available)) or 'none'})"
    )


def _read_files(files: list[Path], spec: str) -> datasets.Dataset:
    by_builder: dict[str, list[str]] = {}
    for file in files:
        by_builder.setdefault(FILE_BUILDERS[file.suffix.lower()], []).append(str(file))
    parts = []
    for builder, data_files in by_builder.items():
        try:
            parts.append(datasets.load_dataset(builder, data_files=data_files, split="train"))
        except Exception as err:  # noqa: BLE001 -- any reader error: say which files, keep the cause chained
            raise ValueError(f"dataset '{spec}': could not read {', '.join(data_files)}: {err}") from err
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise ValueError(f"dataset '{spec}': files {[str(f) for f in files]} have incompatible columns: {err}") from err


# --------------------------------------------------------------------------------------------------------------------
# Mixer specs and sampling


@dataclass(frozen=True)
class SampleSize:
    """How many rows to draw from a pool: a fraction (may exceed 1: repeats) or an exact row count."""

    fraction: float | None = 1.0
    size: int | None = None

    def rows(self, available: int, source: str = "?") -> int:
        """Rows drawn per epoch: floor(fraction x available), or size (which must not exceed what is available)."""
        if self.size is not None:
            if self.size > available:
                raise ValueError(
                    f"dataset '{source}': size {self.size} exceeds the {available} rows available (after filtering, "
                    "validation and dedup); use a fraction > 1 to repeat rows on purpose"
                )
            return self.size
        return int(math.floor(self.fraction * available + _EPS))


@dataclass(frozen=True)
class SourceSpec:
    """One entry of a dataset_mixer, validated."""

    name: str
    sample: SampleSize = field(default_factory=SampleSize)
    format: str | None = None
    filter: Mapping[str, Any] | None = None
    split_map: Mapping[str, str] | None = None

    def source_split(self, split: str) -> str:
        """The source's own name for a requested split (split_map lets a source call 'train' what we ask as 'train_sft')."""
        return (self.split_map or {}).get(split, split)


def parse_mixer(dataset_mixer: Mapping[str, Any]) -> list[SourceSpec]:
    """Validate a dataset_mixer ({source: weight | {fraction|size, format, filter, split_map}}) before loading anything."""
    if not dataset_mixer:
        raise ValueError("dataset_mixer is empty: give at least one source")
    if not isinstance(dataset_mixer, Mapping):
        raise ValueError(f"dataset_mixer must be a mapping of source -> weight, got {type(dataset_mixer).__name__}")
    return [_parse_entry(str(name), value) for name, value in dataset_mixer.items()]


def _parse_entry(name: str, value: Any) -> SourceSpec:
    if not isinstance(value, Mapping):
        return SourceSpec(name, SampleSize(fraction=_fraction(name, "weight", value)))
    unknown = sorted(set(value) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(
            f"dataset '{name}': unknown key(s) {unknown} in mixer spec (valid keys: {', '.join(SPEC_KEYS)})"
        )
    if "fraction" in value and "size" in value:
        raise ValueError(f"dataset '{name}': give either 'fraction' or 'size', not both")
    if "size" in value:
        size = value["size"]
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 or int(size) != size:
            raise ValueError(f"dataset '{name}': 'size' must be a non-negative whole number of rows, got {size!r}")
        sample = SampleSize(fraction=None, size=int(size))
    else:
        sample = SampleSize(fraction=_fraction(name, "fraction", value.get("fraction", 1.0)))
    adapter = value.get("format")
    if adapter is not None and not isinstance(adapter, str):
        raise ValueError(f"dataset '{name}': 'format' must be an adapter name, got {adapter!r}")
    row_filter = value.get("filter")
    if row_filter is not None and (not isinstance(row_filter, Mapping) or not row_filter):
        raise ValueError(
            f"dataset '{name}': 'filter' must be a non-empty mapping column -> value(s), got {row_filter!r}"
        )
    split_map = value.get("split_map")
    if split_map is not None and (
        not isinstance(split_map, Mapping) or not all(isinstance(v, str) for v in split_map.values())
    ):
        raise ValueError(f"dataset '{name}': 'split_map' must map requested split -> source split, got {split_map!r}")
    return SourceSpec(name, sample, adapter, dict(row_filter) if row_filter else None, split_map)


def _fraction(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"dataset '{name}': {key} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"dataset '{name}': {key} must not be negative, got {value}")
    return float(value)


def _as_sample_size(value: SampleSize | float | int | Mapping[str, Any], name: str) -> SampleSize:
    if isinstance(value, SampleSize):
        return value
    if isinstance(value, Mapping):
        return _parse_entry(name, {k: v for k, v in value.items() if k in ("fraction", "size")}).sample
    return SampleSize(fraction=_fraction(name, "weight", value))


def _stable_int(key: Any) -> int:
    # Python's hash() of str is salted per process; ranks must agree, so hash text with crc32.
    if isinstance(key, (int, np.integer)):
        return int(key) % 2**63
    return zlib.crc32(str(key).encode("utf-8"))


def seeded_rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator that depends only on (seed, keys): the same on every rank and in every process."""
    return np.random.default_rng(np.random.SeedSequence([_stable_int(seed), *(_stable_int(k) for k in keys)]))


def sample_indices(available: int, sample: SampleSize, seed: int, *keys: Any, source: str = "?") -> np.ndarray:
    """Row indices drawn from a pool of `available` rows, a pure function of (seed, keys).

    Whole multiples of the pool are copied in order (weight 2.5 -> every row twice) and the remainder is a seeded
    sample without replacement, returned sorted (the mixed set is shuffled afterwards).
    """
    target = sample.rows(available, source)
    if available == 0 or target == 0:
        return np.zeros(0, dtype=np.int64)
    copies, remainder = divmod(target, available)
    parts = [np.arange(available, dtype=np.int64)] * copies
    if remainder:
        drawn = seeded_rng(seed, *keys).choice(available, size=remainder, replace=False)
        parts.append(np.sort(drawn).astype(np.int64))
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------------------------------
# Statistics


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
        group = [r for r in stats.rows if _base(r.split) == kind]
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


def _token_stats(dataset: datasets.Dataset, tokenizer: Any, batch_size: int = 1024) -> tuple[float, float, int]:
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


# --------------------------------------------------------------------------------------------------------------------
# The mixed split, resampled per epoch


class EpochResampledDataset(torch.utils.data.Dataset):
    """A mixed split whose rows are drawn afresh from full per-source pools each epoch.

    Which rows back the dataset is a pure function of (seed, epoch): two instances built alike (e.g. one per rank)
    agree for every epoch. The length is the same every epoch. ``set_epoch`` switches the draw; the
    ``ResampleEachEpochCallback`` calls it from the Trainer. Keep ``dataloader_persistent_workers`` off: persistent
    workers hold a copy of the dataset made before ``set_epoch``.
    """

    def __init__(
        self,
        pools: Mapping[str, datasets.Dataset],
        sample_sizes: Mapping[str, SampleSize | float | int | Mapping[str, Any]],
        seed: int = 42,
        epoch: int = 0,
        max_samples: int | None = None,
        shuffle: bool = True,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        key: str = TRAIN,
    ):
        if not pools:
            raise ValueError("EpochResampledDataset needs at least one pool")
        missing = [name for name in pools if name not in sample_sizes]
        if missing:
            raise ValueError(f"no sample size for pool(s) {missing}")
        self.names = list(pools)
        self.seed = seed
        self.key = key  # part of every RNG key, so the train and test mixes draw independently
        self.max_samples = max_samples
        self.shuffle = shuffle
        self.transform = transform
        self.sample_sizes = {name: _as_sample_size(sample_sizes[name], name) for name in self.names}
        lengths = [len(pools[name]) for name in self.names]
        self.pool_lengths = dict(zip(self.names, lengths, strict=True))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.pool = (
            pools[self.names[0]] if len(pools) == 1 else datasets.concatenate_datasets([pools[n] for n in self.names])
        )
        # Validates every size up front (size > pool raises) and fixes the per-epoch length.
        self.rows_per_source = {n: self.sample_sizes[n].rows(self.pool_lengths[n], n) for n in self.names}
        total = sum(self.rows_per_source.values())
        self._length = total if max_samples is None else min(total, max_samples)
        self.epoch = epoch
        self._indices = self.epoch_indices(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Indices into ``self.pool`` that back epoch `epoch`, in training order (pure function of seed and epoch)."""
        parts = [
            self.offsets[i]
            + sample_indices(self.pool_lengths[n], self.sample_sizes[n], self.seed, self.key, n, epoch, source=n)
            for i, n in enumerate(self.names)
        ]
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.shuffle:
            indices = indices[seeded_rng(self.seed, self.key, "order", epoch).permutation(len(indices))]
        return indices[: self._length]

    def set_epoch(self, epoch: int) -> None:
        """Draw the rows of `epoch` (idempotent: the Trainer's data loader may call it too)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._indices = self.epoch_indices(epoch)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.pool[int(self._indices[index])]
        return self.transform(row) if self.transform is not None else row

    def source_of(self, indices: np.ndarray | None = None) -> list[str]:
        """The pool name each row of the current epoch (or each given pool index) comes from."""
        indices = self._indices if indices is None else indices
        return [self.names[i] for i in np.searchsorted(self.offsets, indices, side="right") - 1]

    def counts_per_source(self, epoch: int | None = None) -> dict[str, int]:
        """Rows per pool in an epoch (after max_samples)."""
        indices = self._indices if epoch is None or epoch == self.epoch else self.epoch_indices(epoch)
        counts = Counter(self.source_of(indices))
        return {n: counts.get(n, 0) for n in self.names}

    def materialize(self, epoch: int | None = None) -> datasets.Dataset:
        """The rows of an epoch (default: the current one) as a ``datasets.Dataset``."""
        indices = self._indices if epoch is None or epoch == self.epoch else self.epoch_indices(epoch)
        return self.pool.select(indices)

    def map_pools(self, function: Callable, **map_kwargs: Any) -> EpochResampledDataset:
        """Apply ``Dataset.map`` once to the pools (e.g. tokenise) and keep resampling the mapped rows.

        The map must keep one output row per input row, or the per-source offsets would no longer hold.
        """
        mapped = self.pool.map(function, **map_kwargs)
        if len(mapped) != len(self.pool):
            raise ValueError(f"map_pools: the map changed the row count ({len(self.pool)} -> {len(mapped)})")
        clone = object.__new__(EpochResampledDataset)
        clone.__dict__.update(self.__dict__)
        clone.pool = mapped
        return clone


class ResampleEachEpochCallback(TrainerCallback):
    """Redraws an ``EpochResampledDataset`` at the start of every epoch (epoch = int(state.epoch))."""

    def __init__(self, dataset: EpochResampledDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is a float (1.5 after resuming mid-epoch); the epoch in progress is its integer part.
        self.dataset.set_epoch(int(math.floor((state.epoch or 0.0) + _EPS)))
        return control


# --------------------------------------------------------------------------------------------------------------------
# Mixing


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
    splits: Sequence[str] = (TRAIN, TEST),
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
) -> MixedData:
    """Load, filter, normalise to `schema`, dedup, sample and concatenate every source of `dataset_mixer`.

    - weights: a number (fraction of the rows; > 1 repeats whole copies plus a seeded remainder) or
      {fraction: f} | {size: n} with optional per-source {format, filter, split_map}. size > available is an error.
    - splits: names starting with "train" are sampled by weight into the train set; "test*" splits are taken whole.
    - test_split_size: for sources lacking a requested test split (or, with no test split requested, a "test" split),
      carve this many rows (fraction if < 1, else a row count) off the matching train split, seeded.
    - dataset_filter (global) and per-source filter: keep rows whose raw column equals the value (or is in the list).
    - dedup_column: drop rows whose value was already seen in an earlier source/row of the same mixed split, before
      sampling (so deliberate repeats survive).
    - max_samples: keep the first n rows of each shuffled mixed split.
    - resample_each_epoch: also return ``train_resampled``, which redraws fractions/sizes every epoch.
    - extra_columns: raw columns every source must have and that are kept as they are (e.g. a loss weight).
    """
    sources = parse_mixer(dataset_mixer)
    for source in sources:  # fail on a mistyped path before spending minutes loading the sources before it
        if _looks_like_path(source.name) and not Path(source.name).expanduser().exists():
            raise FileNotFoundError(f"dataset '{source.name}': no such file or folder")
    train_splits, test_splits = _route_splits(splits, test_split_size)
    carve = _parse_test_split_size(test_split_size)
    _check_positive("max_samples", max_samples)
    stats = MixStats(resampled_each_epoch=resample_each_epoch)

    # Per mixed split (train, test): pools keyed by a label unique per (source, split), in mixer order.
    pools: dict[str, dict[str, datasets.Dataset]] = {TRAIN: {}, TEST: {}}
    sizes: dict[str, dict[str, SampleSize]] = {TRAIN: {}, TEST: {}}
    pool_stats: dict[str, dict[str, SourceStats]] = {TRAIN: {}, TEST: {}}
    for source in sources:
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
                loaded.update(_carve_test(source, split, train_splits, loaded, carve, seed, prepare, stats))
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
            pools[kind], sizes[kind], seed, epoch=0, max_samples=max_samples, shuffle=shuffle, key=kind
        )
        _record_final(mixed[kind], pool_stats[kind], tokenizer)
    train, test = (mixed[k].materialize(0) if mixed[k] is not None else None for k in (TRAIN, TEST))
    return MixedData(train, test, stats, mixed[TRAIN] if resample_each_epoch else None)


def _route_splits(splits: Sequence[str], test_split_size: Any) -> tuple[list[str], list[str]]:
    if isinstance(splits, str):
        splits = [splits]
    bad = [s for s in splits if _base(s) not in (TRAIN, TEST)]
    if bad:
        raise ValueError(f"dataset_splits {bad}: every split must start with 'train' or 'test'")
    train_splits = list(dict.fromkeys(s for s in splits if _base(s) == TRAIN))
    test_splits = list(dict.fromkeys(s for s in splits if _base(s) == TEST))
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
    raw = load_source(source.name, source.source_split(split))
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
        return formatting.normalize_dataset(raw, source.name, schema, adapter=adapter, skip_invalid=skip_invalid,
                                            extra_columns=extra_columns)
    if extra_columns:
        raise ValueError(f"dataset '{source.name}' is {native} data converted to {schema}: extra columns "
                         f"({', '.join(extra_columns)}) are only carried through unconverted sources")
    normalised, skipped = formatting.normalize_dataset(
        raw, source.name, native, adapter=adapter, skip_invalid=skip_invalid
    )
    return convert(normalised), skipped


def _native_schema(columns: list[str], schema: str, adapter: str | None) -> str | None:
    """The schema the source's rows are in: its adapter's, else `schema` when detectable as such, else any detected."""
    if adapter is not None and adapter != "auto":
        return formatting.get_adapter(adapter).schema
    for wanted in (schema, None):
        try:
            return formatting.get_adapter(formatting.detect_format(columns, wanted)).schema
        except ValueError:
            continue
    return None


def _conversion(native: str | None, schema: str) -> Callable | None:
    conversions = {
        ("preference", "unpaired"): formatting.preference_to_unpaired,
        ("preference", "sft"): formatting.preference_to_sft,
        ("sft", "prompt"): formatting.sft_to_prompt,
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
) -> dict[str, datasets.Dataset]:
    """Split rows off the train split matching `test_split` (test_sft <- train_sft, else the first train split)."""
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
    n_test = math.ceil(carve * len(pool) - _EPS) if isinstance(carve, float) else carve
    if n_test >= len(pool):
        raise ValueError(
            f"dataset '{source.name}': test_split_size {carve} leaves no training rows in '{parent}' ({len(pool)} rows)"
        )
    order = seeded_rng(seed, source.name, parent, "test_split").permutation(len(pool))
    test_rows, train_rows = np.sort(order[:n_test]), np.sort(order[n_test:])
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
        keep = set(columns_to_keep) | set(formatting.REQUIRED_COLUMNS[schema]) | {"source"}
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
            row.mean_turns, row.mean_tokens, row.max_tokens = _token_stats(mixed.pool.select(rows), tokenizer)
