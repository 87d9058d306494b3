"""Which preference pairs a DPO run trains on, and with what loss weight.

``max_data_size`` draws a seeded subset; ``preference_config`` gives every integer score-difference bucket a weight
and rows are *sampled* by those weights (weighted sampling without replacement, Efraimidis-Spirakis keys
``u ** (1 / w)``, seeded with the training seed) within the ``max_data_size`` budget. With every weight 1 this is
exactly the plain ``max_data_size`` subset, so the two compare as baseline and treatment. Weight 0 excludes a bucket;
a budget larger than the eligible rows takes them all. ``rm_weight_column`` copies a per-pair loss weight into the
column the trainer reads. ``load_preference_data`` is shared by run_dpo and precompute_ref_logprobs, so both see the
very same rows.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from chatalign.configs import ConfigError
from chatalign.store import seeded_rng
from chatalign.train.run import load_mixture

logger = logging.getLogger(__name__)


DEFAULT_BUCKET = -100  # preference_config key that sets the weight of every bucket not listed
PAIR_WEIGHT = "chatalign_pair_weight"  # internal column the weighted collator reads


# --------------------------------------------------------------------------------------------------------------------
# max_data_size and preference_config


def parse_preference_config(config: Mapping[Any, Any]) -> tuple[float, dict[int, float]]:
    """(default weight, {bucket: weight}) from a preference_config; keys are whole numbers, -100 is the default."""
    if not isinstance(config, Mapping) or not config:
        raise ConfigError(
            f"preference_config must be a non-empty mapping of score difference -> weight, got {config!r}")
    default, weights = 1.0, {}
    for key, value in config.items():
        try:
            number = float(key)
        except (TypeError, ValueError):
            raise ConfigError(f"preference_config key {key!r} is not a number (a score difference)") from None
        if not number.is_integer():
            raise ConfigError(f"preference_config key {key!r} is not a whole number: buckets are integer differences")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"preference_config[{key!r}] must be a finite weight >= 0, got {value!r}")
        if int(number) == DEFAULT_BUCKET:
            default = float(value)
        else:
            weights[int(number)] = float(value)
    return default, weights


def score_bucket(score_chosen: float, score_rejected: float) -> int:
    """score_chosen - score_rejected rounded to the nearest integer, halves away from zero (0.5 -> 1, -2.5 -> -3)."""
    diff = float(score_chosen) - float(score_rejected)
    return int(math.copysign(math.floor(abs(diff) + 0.5), diff))


def _row_label(dataset, index: int) -> str:
    row = dataset[index]
    parts = [f"source '{row['source']}'"] if row.get("source") else []
    if row.get("prompt_id"):
        parts.append(f"prompt_id {row['prompt_id']!r}")
    return f"row {index}" + (f" ({', '.join(parts)})" if parts else "")


def bucket_weights(dataset, preference_config: Mapping[Any, Any], split: str = "train") -> tuple[list[int], np.ndarray]:
    """Each row's score-difference bucket and its sampling weight; a row without scores is an error naming it."""
    default, weights = parse_preference_config(preference_config)
    missing = [c for c in ("score_chosen", "score_rejected") if c not in dataset.column_names]
    if missing:
        sources = sorted(set(dataset["source"])) if "source" in dataset.column_names else []
        raise ValueError(
            f"preference_config buckets rows by score_chosen - score_rejected, but the {split} data has no "
            f"{' or '.join(missing)} column (sources: {', '.join(sources) or 'unknown'})"
        )
    buckets = []
    for index, (chosen, rejected) in enumerate(zip(dataset["score_chosen"], dataset["score_rejected"], strict=True)):
        for name, value in (("score_chosen", chosen), ("score_rejected", rejected)):
            if value is None or not math.isfinite(value):
                raise ValueError(
                    f"{split} {_row_label(dataset, index)}, field '{name}': preference_config needs both scores, "
                    f"got {value!r}"
                )
        buckets.append(score_bucket(chosen, rejected))
    return buckets, np.array([weights.get(b, default) for b in buckets], dtype=np.float64)


def weighted_sample(weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k row indices drawn without replacement with probability proportional to weight (Efraimidis-Spirakis).

    Each row with weight w > 0 gets the key u ** (1 / w), u ~ U(0, 1] from a generator seeded only by `seed`; the k
    largest keys win. Compared as log(u) / w, which orders the same and does not underflow. Rows of weight 0 are
    never drawn. Returned sorted, so the selection keeps the data's order.
    """
    weights = np.asarray(weights, dtype=np.float64)
    eligible = weights > 0
    if k > int(eligible.sum()):
        raise ValueError(f"cannot draw {k} rows: only {int(eligible.sum())} have a positive weight")
    u = 1.0 - seeded_rng(seed, "dpo_data_selection").random(len(weights))  # in (0, 1]: log(u) is finite
    keys = np.full(len(weights), -np.inf)
    keys[eligible] = np.log(u[eligible]) / weights[eligible]
    order = np.argsort(-keys, kind="stable")
    return np.sort(order[:k])


def select_preference_data(dataset, max_data_size: int | None, preference_config: Mapping | None, seed: int):
    """The training rows after max_data_size / preference_config, and counts (per bucket before and after)."""
    if max_data_size is None and preference_config is None:
        return dataset, {}
    if preference_config is not None:
        buckets, weights = bucket_weights(dataset, preference_config)
    else:
        buckets, weights = None, np.ones(len(dataset))
    eligible = int((weights > 0).sum())
    if eligible == 0:
        raise ValueError(f"preference_config {dict(preference_config)} gives every training row weight 0")
    k = eligible if max_data_size is None else min(max_data_size, eligible)
    if max_data_size is not None and max_data_size > eligible:
        logger.warning("max_data_size %d exceeds the %d eligible training rows: taking them all", max_data_size,
                       eligible)
    indices = weighted_sample(weights, k, seed)
    counts: dict[str, Any] = {"available": len(dataset), "eligible": eligible, "selected": k}
    if buckets is not None:
        before, after = Counter(buckets), Counter(buckets[i] for i in indices)
        bucket_weight = dict(zip(buckets, weights.tolist(), strict=True))
        counts["buckets"] = {
            b: {"weight": bucket_weight[b], "available": before[b], "selected": after.get(b, 0)} for b in sorted(before)
        }
        lines = [f"  {b:>5}  {v['weight']:>7g}  {v['available']:>9}  {v['selected']:>8}"
                 for b, v in counts["buckets"].items()]
        logger.info("preference_config sampling (seed %d), score difference buckets:\n  %5s  %7s  %9s  %8s\n%s",
                    seed, "diff", "weight", "available", "selected", "\n".join(lines))
    logger.info("training on %d of %d preference pairs (max_data_size=%s, seed %d)", k, len(dataset), max_data_size,
                seed)
    return dataset.select(indices), counts


# --------------------------------------------------------------------------------------------------------------------
# Per-pair weights and the data of a run


def add_pair_weights(dataset, column: str, split: str = "train"):
    """Copy `column` to the weight column the trainer reads; every value must be a finite number >= 0."""
    if column not in dataset.column_names:
        raise ValueError(
            f"rm_weight_column '{column}': the {split} data has no such column "
            f"(columns after loading: {', '.join(dataset.column_names)})"
        )
    values = dataset[column]
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{split} {_row_label(dataset, index)}, field '{column}': a pair weight must be a "
                             f"finite number >= 0, got {value!r}")
    return dataset.add_column(PAIR_WEIGHT, [float(v) for v in values])


def load_preference_data(data_args, training_args, script_args, tokenizer):
    """(train, eval or None, counts): the mixture, its max_data_size / preference_config selection, pair weights."""
    extra = [script_args.rm_weight_column] if script_args.rm_weight_column else []
    mixture = load_mixture(data_args, "preference", training_args.seed, tokenizer, extra_columns=extra)
    train, selection = select_preference_data(mixture.train, script_args.max_data_size,
                                              script_args.preference_config, training_args.seed)
    evaluation = mixture.test if mixture.test is not None and training_args.eval_strategy != "no" else None
    if script_args.rm_weight_column:
        train = add_pair_weights(train, script_args.rm_weight_column, "train")
        if evaluation is not None:
            evaluation = add_pair_weights(evaluation, script_args.rm_weight_column, "test")
    counts = {"train": {"rows": len(train), **({"selection": selection} if selection else {})}}
    if evaluation is not None:
        counts["test"] = {"rows": len(evaluation)}
    return train, evaluation, counts
