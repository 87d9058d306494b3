"""How many rows to draw from each source, and which: mixer specs, seeded sampling, and per-epoch resampling.

Sampling is a pure function of (seed, source, split, epoch): no global RNG is touched, so every rank of a distributed
run draws the same rows, and ``EpochResampledDataset`` can draw a fresh subset each epoch (Open-Assistant style).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback

from chatalign.data.sources import TRAIN
from chatalign.store import prompt_id, seeded_rng

SPEC_KEYS = ("fraction", "size", "format", "filter", "split_map")


# Guards floor() against binary fractions: 0.29 * 100 == 28.999999999999996 must give 29 rows.
EPS = 1e-9


# --------------------------------------------------------------------------------------------------------------------
# Mixer specs


@dataclass(frozen=True)
class SampleSize:
    """How many rows to draw from a pool: a fraction (may exceed 1: repeats) or an exact row count."""

    fraction: float | None = 1.0
    size: int | None = None

    def rows(self, available: int, source: str = "?", unit: str = "rows") -> int:
        """Units (rows, or whole groups) drawn per epoch: floor(fraction x available), or size (at most available)."""
        if self.size is not None:
            if self.size > available:
                raise ValueError(
                    f"dataset '{source}': size {self.size} exceeds the {available} {unit} available (after filtering, "
                    f"validation and dedup); use a fraction > 1 to repeat {unit} on purpose"
                )
            return self.size
        return int(math.floor(self.fraction * available + EPS))


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


def sample_indices(available: int, sample: SampleSize, seed: int, *keys: Any, source: str = "?",
                   unit: str = "rows") -> np.ndarray:
    """Row indices drawn from a pool of `available` rows, a pure function of (seed, keys).

    Whole multiples of the pool are copied in order (weight 2.5 -> every row twice) and the remainder is a seeded
    sample without replacement, returned sorted (the mixed set is shuffled afterwards).
    """
    target = sample.rows(available, source, unit)
    if available == 0 or target == 0:
        return np.zeros(0, dtype=np.int64)
    copies, remainder = divmod(target, available)
    parts = [np.arange(available, dtype=np.int64)] * copies
    if remainder:
        drawn = seeded_rng(seed, *keys).choice(available, size=remainder, replace=False)
        parts.append(np.sort(drawn).astype(np.int64))
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------------------------------
# The mixed split, resampled per epoch


class EpochResampledDataset(torch.utils.data.Dataset):
    """A mixed split whose rows are drawn afresh from full per-source pools each epoch.

    Which rows back the dataset is a pure function of (seed, epoch): two instances built alike (e.g. one per rank)
    agree for every epoch. The length is the same every epoch.

    ``group_column`` makes whole groups of rows the unit of sampling (rows with the same value, e.g. the real and
    generated rows of one self-play prompt_id): fractions and sizes count groups, shuffling keeps a group's rows
    together and max_samples keeps whole groups. A row whose value is None is grouped by the id of its prompt
    (:func:`chatalign.store.prompt_id`). A grouped draw is made once: it cannot be redrawn per epoch. ``set_epoch`` switches the draw; the
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
        group_column: str | None = None,
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
        self.group_column = group_column
        self.epoch = epoch
        if group_column is not None:
            self.groups = {n: row_groups(pools[n], group_column, n) for n in self.names}
            self._length = None
            self._indices = self.epoch_indices(epoch)
            self._length = len(self._indices)
            counts = Counter(self.source_of(self._group_draw(epoch, cap=False)))
            self.rows_per_source = {n: counts.get(n, 0) for n in self.names}
            return
        # Validates every size up front (size > pool raises) and fixes the per-epoch length.
        self.rows_per_source = {n: self.sample_sizes[n].rows(self.pool_lengths[n], n) for n in self.names}
        total = sum(self.rows_per_source.values())
        self._length = total if max_samples is None else min(total, max_samples)
        self._indices = self.epoch_indices(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Indices into ``self.pool`` that back epoch `epoch`, in training order (pure function of seed and epoch)."""
        if self.group_column is not None:
            return self._group_draw(epoch, cap=True)
        parts = [
            self.offsets[i]
            + sample_indices(self.pool_lengths[n], self.sample_sizes[n], self.seed, self.key, n, epoch, source=n)
            for i, n in enumerate(self.names)
        ]
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.shuffle:
            indices = indices[seeded_rng(self.seed, self.key, "order", epoch).permutation(len(indices))]
        return indices[: self._length]

    def _group_draw(self, epoch: int, cap: bool) -> np.ndarray:
        groups = []
        for i, n in enumerate(self.names):
            picks = sample_indices(len(self.groups[n]), self.sample_sizes[n], self.seed, self.key, n, epoch, source=n,
                                   unit=f"groups of rows by {self.group_column}")
            groups.extend(self.offsets[i] + self.groups[n][g] for g in picks)
        if self.shuffle:
            order = seeded_rng(self.seed, self.key, "order", epoch).permutation(len(groups))
            groups = [groups[k] for k in order]
        if cap and self.max_samples is not None:
            groups = groups[: self.max_samples]
        return np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Draw the rows of `epoch` (idempotent: the Trainer's data loader may call it too)."""
        if epoch != self.epoch and self.group_column is not None:
            raise ValueError(f"a draw of whole groups (by {self.group_column}) is made once; it cannot be redrawn "
                             "for another epoch")
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


def row_groups(pool: datasets.Dataset, column: str, source: str) -> list[np.ndarray]:
    """Pool-local row indices per value of `column`, groups in order of first appearance."""
    if column not in pool.column_names:
        raise ValueError(f"dataset '{source}': rows are selected in whole groups by '{column}', but it has no such "
                         f"column (columns: {', '.join(pool.column_names)})")
    prompts = pool["prompt"] if "prompt" in pool.column_names else None
    first: dict[Any, int] = {}
    groups: list[list[int]] = []
    for index, value in enumerate(pool[column]):
        if value is None:
            value = prompt_id(prompts[index]) if prompts is not None else ("row", index)
        slot = first.setdefault(value, len(groups))
        if slot == len(groups):
            groups.append([])
        groups[slot].append(index)
    return [np.asarray(g, dtype=np.int64) for g in groups]


class ResampleEachEpochCallback(TrainerCallback):
    """Redraws an ``EpochResampledDataset`` at the start of every epoch (epoch = int(state.epoch))."""

    def __init__(self, dataset: EpochResampledDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is a float (1.5 after resuming mid-epoch); the epoch in progress is its integer part.
        self.dataset.set_epoch(int(math.floor((state.epoch or 0.0) + EPS)))
        return control
