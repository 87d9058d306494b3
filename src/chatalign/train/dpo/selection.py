"""Which preference pairs a DPO run trains on, and with what loss weight.

``max_data_size`` alone draws a seeded subset of that many pairs. ``preference_config`` ({score difference: weight},
-100 the weight of every difference not listed) selects by preference strength, ``score_chosen - score_rejected``,
in one of two ways (``preference_sampling``):

* ``quota`` (the default) is LION's rule (``zephyr_dpo_pref_strength.py``), computed as LION computes it: each pair
  falls into a left-aligned bin 0..9 (``np.digitize(diff, linspace(0, 9, 10), right=False) - 1``: bin 1 holds
  1 <= diff < 2, bin 9 every diff >= 9); every bin gets the fixed quota ``int((max_data_size // sum of the 10 bin
  weights) * weight)``; a bin with more pairs than its quota gives a seeded sample of that many (seeded by the
  training seed), a bin with fewer gives all it has. So ``{-100: 1.0}`` means the same number of pairs per bin. A pair
  with a negative difference is excluded and counted (LION's code would index it as bin 9 by accident).
* ``weighted`` samples rows without replacement with probability proportional to the weight of their bucket (the
  difference rounded half away from zero; Efraimidis-Spirakis keys ``u ** (1 / w)``) within the ``max_data_size``
  budget, so the selection keeps the data's spread of strengths; with every weight 1 it is exactly the plain
  ``max_data_size`` subset.

The counts per bin go to the log and to the run's ``train_results.json``. ``rm_weight_column`` copies a per-pair loss
weight into the column the trainer reads; ``rm_importance_file`` (LION's rm_importance selection) and
``wis_importance_file`` (wis loss weights) are described in chatalign.train.dpo.importance. ``load_preference_data`` is
shared by run_dpo and precompute_ref_logprobs, so both see the very same rows.
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
from chatalign.train.dpo.importance import MU_COLUMNS, read_pair_values, rm_importance_select, values_for_rows
from chatalign.train.dpo.reference import pair_keys
from chatalign.train.run import load_mixture

logger = logging.getLogger(__name__)


DEFAULT_BUCKET = -100  # preference_config key that sets the weight of every bucket not listed
PREFERENCE_SAMPLING = ("quota", "weighted")
LION_BINS = np.linspace(0, 9, 10)  # LION's left-aligned bins of score_chosen - score_rejected: 0, 1, ..., 9
PAIR_WEIGHT = "chatalign_pair_weight"  # internal column the weighted collator reads


# --------------------------------------------------------------------------------------------------------------------
# max_data_size and preference_config


def parse_preference_config(config: Mapping[Any, Any], sampling: str = "quota") -> tuple[float, dict[int, float]]:
    """(default weight, {bucket: weight}) from a preference_config; keys are whole numbers, -100 is the default.

    With quota sampling the buckets are LION's bins, so a key outside 0..9 (other than -100) would never apply: an
    error rather than a weight silently ignored.
    """
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
        elif sampling == "quota" and not 0 <= number < len(LION_BINS):
            raise ConfigError(f"preference_config key {key!r}: quota sampling has the bins 0..9 (a difference of 9 or "
                              "more is bin 9) and -100 for every bin not listed")
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


def score_differences(dataset, split: str = "train") -> np.ndarray:
    """score_chosen - score_rejected of every row; a row or a dataset without scores is an error naming it."""
    missing = [c for c in ("score_chosen", "score_rejected") if c not in dataset.column_names]
    if missing:
        sources = sorted(set(dataset["source"])) if "source" in dataset.column_names else []
        raise ValueError(
            f"preference_config buckets rows by score_chosen - score_rejected, but the {split} data has no "
            f"{' or '.join(missing)} column (sources: {', '.join(sources) or 'unknown'})"
        )
    diffs = []
    for index, (chosen, rejected) in enumerate(zip(dataset["score_chosen"], dataset["score_rejected"], strict=True)):
        for name, value in (("score_chosen", chosen), ("score_rejected", rejected)):
            if value is None or not math.isfinite(value):
                raise ValueError(
                    f"{split} {_row_label(dataset, index)}, field '{name}': preference_config needs both scores, "
                    f"got {value!r}"
                )
        diffs.append(float(chosen) - float(rejected))
    return np.array(diffs, dtype=np.float64)


def bucket_weights(dataset, preference_config: Mapping[Any, Any], split: str = "train") -> tuple[list[int], np.ndarray]:
    """Weighted sampling: each row's score-difference bucket (rounded) and its sampling weight."""
    default, weights = parse_preference_config(preference_config, "weighted")
    buckets = [score_bucket(diff, 0.0) for diff in score_differences(dataset, split)]
    return buckets, np.array([weights.get(b, default) for b in buckets], dtype=np.float64)


def lion_bins(diffs: np.ndarray) -> np.ndarray:
    """LION's bin of each score difference, ``np.digitize(diff, linspace(0, 9, 10), right=False) - 1``: bin k holds
    k <= diff < k + 1, bin 9 every diff >= 9; -1 for a negative difference."""
    return np.digitize(np.asarray(diffs, dtype=np.float64), LION_BINS, right=False) - 1


def quota_select(diffs: np.ndarray, preference_config: Mapping[Any, Any], max_data_size: int,
                 seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """LION's quota rule (module docstring): the selected row indices, sorted, and the counts per bin."""
    default, weights = parse_preference_config(preference_config, "quota")
    bin_weights = [weights.get(b, default) for b in range(len(LION_BINS))]
    if sum(bin_weights) == 0:
        raise ValueError(f"preference_config {dict(preference_config)} gives every bin weight 0")
    per_unit_weight = max_data_size // sum(bin_weights)  # as LION: floor division, before the weight multiplies
    bins = lion_bins(diffs)
    picked, table = [], {}
    for b, weight in enumerate(bin_weights):
        rows = np.flatnonzero(bins == b)
        quota = int(per_unit_weight * weight)
        chosen = rows if len(rows) <= quota else seeded_rng(seed, "preference_config", b).choice(
            rows, size=quota, replace=False)
        picked.append(chosen)
        table[b] = {"weight": weight, "quota": quota, "available": len(rows), "selected": len(chosen)}
    negative = int((bins < 0).sum())
    if negative:
        logger.warning("preference_config: %d pairs have score_chosen < score_rejected and are excluded (no bin "
                       "holds a negative difference)", negative)
    indices = np.sort(np.concatenate(picked)).astype(np.int64)
    counts = {"available": len(diffs), "sampling": "quota", "per_unit_weight": per_unit_weight,
              "excluded: negative difference": negative, "selected": len(indices), "bins": table}
    return indices, counts


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


def select_preference_data(dataset, max_data_size: int | None, preference_config: Mapping | None, seed: int,
                           sampling: str = "quota"):
    """The training rows after max_data_size / preference_config, and counts (per bin or bucket)."""
    if max_data_size is None and preference_config is None:
        return dataset, {}
    if sampling not in PREFERENCE_SAMPLING:
        raise ConfigError(f"preference_sampling must be one of {', '.join(PREFERENCE_SAMPLING)}, got {sampling!r}")
    if preference_config is not None and sampling == "quota":
        if max_data_size is None:
            raise ConfigError("preference_config with quota sampling needs max_data_size: each bin's quota is "
                              "int((max_data_size // sum of the bin weights) * weight)")
        indices, counts = quota_select(score_differences(dataset), preference_config, max_data_size, seed)
        if not len(indices):
            raise ValueError(f"preference_config selects no pair: {counts['per_unit_weight']:g} pairs per unit of "
                             f"weight (max_data_size {max_data_size} // the bin weights) and bins of "
                             f"{[v['available'] for v in counts['bins'].values()]} pairs")
        _log_bins(counts, seed)
        return dataset.select(indices), counts
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


def _log_bins(counts: dict[str, Any], seed: int) -> None:
    lines = [f"  {b:>5}  {v['weight']:>7g}  {v['quota']:>7}  {v['available']:>9}  {v['selected']:>8}"
             for b, v in counts["bins"].items()]
    logger.info("preference_config quota sampling (LION's bins, seed %d, %g pairs per unit weight):\n"
                "  %5s  %7s  %7s  %9s  %8s\n%s\ntraining on %d of %d preference pairs (%d excluded: negative "
                "difference)", seed, counts["per_unit_weight"], "bin", "weight", "quota", "available", "selected",
                "\n".join(lines), counts["selected"], counts["available"], counts["excluded: negative difference"])


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


def rm_importance_selection(dataset, script_args, seed: int):
    """LION's rm_importance selection of the training rows (chatalign.train.dpo.importance) and its counts."""
    path = script_args.rm_importance_file
    values = read_pair_values(path, ("weight",), "rm_importance")
    keys = pair_keys(dataset)
    entries = values_for_rows(keys, values, path, "rm_importance", lambda i: _row_label(dataset, i))
    scored = np.array([i for i, e in enumerate(entries) if e is not None], dtype=np.int64)
    picked, counts = rm_importance_select(np.array([entries[i]["weight"] for i in scored]), script_args.max_data_size,
                                          seed, script_args.rm_importance_min_weight)
    # A pair compute_lm_reward could not score (its prompt alone fills max_length) is one TRL drops in training too.
    counts = {"file": str(path), "excluded: unscored (prompt fills max_length)": len(entries) - len(scored), **counts}
    return dataset.select(scored[picked]), counts


def add_importance_logps(dataset, path, split: str = "train"):
    """The wis columns: log mu(y_w|x), log mu(y_l|x) of every row from an importance_weights.jsonl; rows the file
    marks dropped are excluded (counted in the log)."""
    from datasets import Value

    values = read_pair_values(path, ("chosen_logps", "rejected_logps"), "wis_importance")
    entries = values_for_rows(pair_keys(dataset), values, path, "wis_importance",
                              lambda i: f"{split} {_row_label(dataset, i)}")
    unscored = [i for i, e in enumerate(entries) if e is None]
    if unscored:  # no log mu, so no wis weight: such a pair's prompt filled max_length under a candidate's template
        logger.warning("wis: %d %s pairs have no log mu(y|x) in %s (dropped by max_length under a candidate): "
                       "excluded", len(unscored), split, path)
        keep = [i for i, e in enumerate(entries) if e is not None]
        dataset, entries = dataset.select(keep), [entries[i] for i in keep]
    dataset = dataset.add_column(MU_COLUMNS[0], [e["chosen_logps"] for e in entries], feature=Value("float64"))
    return dataset.add_column(MU_COLUMNS[1], [e["rejected_logps"] for e in entries], feature=Value("float64"))


def load_preference_data(data_args, training_args, script_args, tokenizer):
    """(train, eval or None, counts): the mixture, its max_data_size / preference_config / rm_importance selection,
    pair weights and wis log-probs."""
    extra = [script_args.rm_weight_column] if script_args.rm_weight_column else []
    mixture = load_mixture(data_args, "preference", training_args.seed, tokenizer, extra_columns=extra)
    if getattr(script_args, "rm_importance_file", None):
        train, selection = rm_importance_selection(mixture.train, script_args, training_args.seed)
    else:
        train, selection = select_preference_data(mixture.train, script_args.max_data_size,
                                                  script_args.preference_config, training_args.seed,
                                                  script_args.preference_sampling)
    evaluation = mixture.test if mixture.test is not None and training_args.eval_strategy != "no" else None
    if script_args.rm_weight_column:
        train = add_pair_weights(train, script_args.rm_weight_column, "train")
        if evaluation is not None:
            evaluation = add_pair_weights(evaluation, script_args.rm_weight_column, "test")
    if getattr(script_args, "wis_importance_file", None):
        before = len(train)
        train = add_importance_logps(train, script_args.wis_importance_file, "train")
        if len(train) < before:
            selection = {**selection, "excluded: no log mu (prompt fills max_length)": before - len(train)}
        if evaluation is not None:
            evaluation = add_importance_logps(evaluation, script_args.wis_importance_file, "test")
    counts = {"train": {"rows": len(train), **({"selection": selection} if selection else {})}}
    if evaluation is not None:
        counts["test"] = {"rows": len(evaluation)}
    return train, evaluation, counts
