"""DPO for chatalign: recipe keys, preference-data selection, per-pair loss weights and precomputed reference log-probs.

Used by scripts/run_dpo.py and scripts/precompute_ref_logprobs.py. Four pieces:

* ``DPOScriptArguments``: the recipe keys run_dpo adds to TRL's DPOConfig (checked by ``check_dpo_arguments`` before
  anything is loaded).
* Data selection (``select_preference_data``): ``max_data_size`` draws a seeded subset; ``preference_config`` gives
  every integer score-difference bucket a weight and rows are *sampled* by those weights (weighted sampling without
  replacement, Efraimidis-Spirakis keys ``u ** (1 / w)``, seeded with the training seed) within the ``max_data_size``
  budget. With every weight 1 this is exactly the plain ``max_data_size`` subset, so the two compare as baseline and
  treatment. Weight 0 excludes a bucket; a budget larger than the eligible rows takes them all.
* ``ChatalignDPOTrainer``: TRL's DPOTrainer that (a) multiplies each pair's loss by a weight read from a column
  (``rm_weight_column``) and (b) trains on reference log-probs already in the dataset without loading a reference.
* The precomputed reference file (``write_ref_logps_file`` / ``read_ref_logps_file`` / ``attach_ref_logps``).

Precomputed reference file format (one parquet file, written atomically):
    columns  key: str                 sha256 of the canonical JSON of {"prompt", "chosen", "rejected"} message lists
             ref_chosen_logps: float32, ref_rejected_logps: float32
                                      TRL's sums of completion-token log-probs (NaN where dropped)
             dropped: bool            TRL drops the pair in training too (its prompt alone fills max_length)
    schema metadata b"chatalign": JSON {"format": "chatalign-ref-logps/1", "dependency_hash": sha256,
             "dependencies": {reference model path, its config.json hash, its weight-files hash, dtype, mixed
             precision, quantization, tokenizer hash, chat template hash, max_length, truncation_mode,
             ld_alpha}, "rows": n}
A run reuses the file only when every dependency matches; otherwise the first differing one is named.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from chatalign.configs import ConfigError

logger = logging.getLogger(__name__)

# Every DPO loss TRL 1.16 implements (`DPOTrainer._compute_loss`); DPOConfig itself accepts any string.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# Losses that are not a sum of independent per-pair terms, so a per-pair weight has no meaning for them.
UNWEIGHTABLE_LOSS_TYPES = {
    "aot": "it sorts the log-ratios across the batch, so a loss term belongs to no single pair",
    "aot_unpaired": "it sorts the log-ratios across the batch, so a loss term belongs to no single pair",
    "sft": "it is one token-level mean over the whole batch, not a per-pair loss",
}
DEFAULT_BUCKET = -100  # preference_config key that sets the weight of every bucket not listed
PAIR_WEIGHT = "chatalign_pair_weight"  # internal column the weighted collator reads
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's names for precomputed reference log-probs
FILE_FORMAT = "chatalign-ref-logps/1"
_META_KEY = b"chatalign"


@dataclass
class DPOScriptArguments:
    """Recipe keys of run_dpo beyond TRL's DPOConfig."""

    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reference model (default: model_name_or_path; with PEFT the adapter-disabled model)."},
    )
    max_data_size: int | None = field(
        default=None, metadata={"help": "Train on a seeded random subset of this many preference pairs."}
    )
    preference_config: dict[Any, Any] | None = field(
        default=None,
        metadata={
            "help": "Sampling weight per integer score difference (score_chosen - score_rejected, rounded half away "
            "from zero): {-100: default weight, 1: 2.0, 5: 0.5}. Rows are sampled by weight within max_data_size."
        },
    )
    rm_weight_column: str | None = field(
        default=None, metadata={"help": "Column whose per-pair value multiplies that pair's DPO loss."}
    )
    precompute_file_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference log-probs written by scripts/precompute_ref_logprobs.py: run_dpo then loads no reference "
            "model; precompute_ref_logprobs.py writes (or completes) this file."
        },
    )


def check_dpo_arguments(training_args, data_args, script_args) -> None:
    """Config errors that need no data or model: raised before anything is loaded."""
    unknown = [t for t in training_args.loss_type if t not in TRL_LOSS_TYPES]
    if unknown:
        raise ConfigError(f"loss_type {unknown} unknown: TRL's DPO losses are {', '.join(TRL_LOSS_TYPES)}")
    if script_args.rm_weight_column:
        bad = [t for t in training_args.loss_type if t in UNWEIGHTABLE_LOSS_TYPES]
        if bad:
            raise ConfigError(
                f"rm_weight_column cannot weight loss_type '{bad[0]}': {UNWEIGHTABLE_LOSS_TYPES[bad[0]]}. "
                f"Weighted loss types: {', '.join(t for t in TRL_LOSS_TYPES if t not in UNWEIGHTABLE_LOSS_TYPES)}"
            )
    if script_args.max_data_size is not None and script_args.max_data_size < 1:
        raise ConfigError(f"max_data_size must be a positive number of pairs, got {script_args.max_data_size}")
    if script_args.preference_config is not None:
        parse_preference_config(script_args.preference_config)
    if getattr(data_args, "resample_each_epoch", False):
        raise ConfigError("resample_each_epoch is not supported by run_dpo: DPOTrainer tokenises its dataset once")
    if script_args.precompute_file_path:
        if training_args.sync_ref_model:
            raise ConfigError("precompute_file_path fixes the reference, so it cannot be combined with sync_ref_model")
        # TRL's own switch for "reference log-probs come with the data": no reference model is loaded.
        training_args.precompute_ref_log_probs = True


def reference_model_path(model_args, training_args, script_args) -> str | None:
    """The reference model run_dpo must load, or None when it needs none in memory."""
    from chatalign.training import reference_model_path as shared_rule

    return shared_rule(model_args, training_args, script_args.ref_model_name_or_path,
                       precomputed_file=bool(script_args.precompute_file_path))


# --------------------------------------------------------------------------------------------------------------------
# Data selection: max_data_size and preference_config


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
    from chatalign.data import seeded_rng

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
# Pair identity and per-pair weights


def _canonical_messages(messages) -> list[dict]:
    # Arrow gives every message the union of keys; absent ones come back as None and must not change the key.
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def pair_key(prompt, chosen, rejected) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the pair's three message lists."""
    text = json.dumps(
        {"prompt": _canonical_messages(prompt), "chosen": _canonical_messages(chosen),
         "rejected": _canonical_messages(rejected)},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_keys(dataset) -> list[str]:
    columns = zip(dataset["prompt"], dataset["chosen"], dataset["rejected"], strict=True)
    return [pair_key(prompt, chosen, rejected) for prompt, chosen, rejected in columns]


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


# --------------------------------------------------------------------------------------------------------------------
# Data for a DPO run (shared by run_dpo and precompute_ref_logprobs so both see the very same rows)


def load_preference_data(data_args, training_args, script_args, tokenizer):
    """(train, eval or None, counts): the mixture, its max_data_size / preference_config selection, pair weights."""
    from chatalign.training import load_mixture

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


# --------------------------------------------------------------------------------------------------------------------
# Dependencies of reference log-probs


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16


def _file_fingerprint(path: Path) -> str:
    """Size, the safetensors header (names, dtypes, shapes) and 16 evenly spaced 64 KiB samples of the bytes.

    Reading a 15 GB checkpoint in full at every training start would cost minutes; any real change of the weights
    (a fine-tune, another seed) changes the sampled bytes, and a change of shape or dtype changes the header.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        if path.suffix == ".safetensors" and size >= 8:
            header_len = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header_len, size - 8)))
        for i in range(_SAMPLES):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * i // max(1, _SAMPLES - 1)))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def model_fingerprint(name_or_path: str, revision: str | None = None) -> dict[str, str]:
    """Identity of a checkpoint: where it is, its config.json and its weights.

    A local folder's weights are fingerprinted from its weight files. A hub checkpoint is identified by the commit its
    revision resolves to (immutable), so the check needs only its config.json, not the weights downloaded.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
        weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if not weights:
            raise FileNotFoundError(f"reference model '{name_or_path}': no weight files in {folder}")
        where, weights_id = str(path.resolve()), _sha256_json({p.name: _file_fingerprint(p) for p in weights})
    else:
        from transformers.utils import cached_file

        folder = Path(cached_file(name_or_path, "config.json", revision=revision)).parent  # .../snapshots/<commit>
        where, weights_id = f"{name_or_path}@{revision or 'main'}", f"hub commit {folder.name}"
    config = json.loads((folder / "config.json").read_text())
    for volatile in ("_name_or_path", "transformers_version"):
        config.pop(volatile, None)
    return {"model": where, "model_config": _sha256_json(config), "model_weights": weights_id}


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary (added tokens included) and, for fast tokenizers, the merges and pre-tokenisation."""
    parts: dict[str, Any] = {"vocab": tokenizer.get_vocab()}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for runtime in ("truncation", "padding"):  # set per call, not part of what a text tokenises to
            spec.pop(runtime, None)
        parts["backend"] = spec
    return _sha256_json(parts)


def reference_dependencies(model_args, training_args, script_args, tokenizer) -> dict[str, Any]:
    """Everything the reference log-probs depend on, in the order mismatches are reported."""
    name = script_args.ref_model_name_or_path or model_args.model_name_or_path
    mixed = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
    return {
        **model_fingerprint(name, model_args.model_revision),
        "dtype": str(model_args.dtype),
        "quantization": "4bit" if model_args.load_in_4bit else "8bit" if model_args.load_in_8bit else None,
        "mixed_precision": mixed,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest(),
        "max_length": training_args.max_length,
        "truncation_mode": training_args.truncation_mode,
        "ld_alpha": training_args.ld_alpha,
    }


_DEPENDENCY_LABELS = {
    "model": "reference model", "model_config": "reference model config.json", "model_weights":
    "reference model weights", "tokenizer": "tokenizer", "chat_template": "chat template",
}  # fmt: skip
_HASHED = {"model_config", "model_weights", "tokenizer", "chat_template"}


def dependency_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first dependency that differs, worded for an error message; None when all match."""
    for key, value in current.items():
        before = stored.get(key)
        if before == value:
            continue
        if key in _HASHED:
            return (f"precomputed with a different {_DEPENDENCY_LABELS[key]} (hash {str(before)[:12]}, "
                    f"this run {str(value)[:12]})")
        if key == "model":
            return f"precomputed with reference model '{before}', this run uses '{value}'"
        return f"precomputed with {key}={before}, this run uses {value}"
    return None


# --------------------------------------------------------------------------------------------------------------------
# The precomputed reference file


@dataclass
class RefLogps:
    """Contents of a precomputed file: key -> (chosen, rejected) log-probs; dropped keys; its metadata."""

    logps: dict[str, tuple[float, float]]
    dropped: set[str]
    meta: dict[str, Any]

    def __contains__(self, key: str) -> bool:
        return key in self.logps or key in self.dropped

    def __len__(self) -> int:
        return len(self.logps) + len(self.dropped)


def read_ref_logps_file(path: str | Path) -> RefLogps:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw_meta = (table.schema.metadata or {}).get(_META_KEY)
    meta = json.loads(raw_meta) if raw_meta else {}
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"precomputed file {path}: not a {FILE_FORMAT} file (format {meta.get('format')!r})")
    columns = table.to_pydict()
    logps, dropped = {}, set()
    for key, chosen, rejected, was_dropped in zip(columns["key"], columns["ref_chosen_logps"],
                                                  columns["ref_rejected_logps"], columns["dropped"], strict=True):
        if was_dropped:
            dropped.add(key)
        else:
            logps[key] = (chosen, rejected)
    return RefLogps(logps, dropped, meta)


def write_ref_logps_file(path: str | Path, data: RefLogps, dependencies: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename), so an interrupted run leaves the previous complete file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted(data.logps) + sorted(data.dropped)
    nan = float("nan")
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "ref_chosen_logps": pa.array([data.logps.get(k, (nan, nan))[0] for k in keys], pa.float32()),
        "ref_rejected_logps": pa.array([data.logps.get(k, (nan, nan))[1] for k in keys], pa.float32()),
        "dropped": pa.array([k in data.dropped for k in keys], pa.bool_()),
    })  # fmt: skip
    meta = {"format": FILE_FORMAT, "dependency_hash": _sha256_json(dict(dependencies)),
            "dependencies": dict(dependencies), "rows": len(keys)}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    data.meta = meta


def open_ref_logps_file(path: str | Path, dependencies: Mapping[str, Any]) -> RefLogps:
    """The file's contents, or an error naming the first dependency that differs from this run's."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"precomputed file {path} does not exist: write it with "
                                "scripts/precompute_ref_logprobs.py and the same recipe")
    data = read_ref_logps_file(path)
    mismatch = dependency_mismatch(data.meta.get("dependencies", {}), dependencies)
    if mismatch:
        raise ValueError(f"precomputed file {path}: {mismatch}")
    return data


def _describe_row(dataset, index: int) -> str:
    row = dataset[index]
    if row.get("prompt_id"):
        return f"prompt_id {row['prompt_id']!r}"
    text = str(row["prompt"][-1].get("content") or "")
    return f"prompt {text[:60]!r}" + ("..." if len(text) > 60 else "")


def attach_ref_logps(dataset, data: RefLogps, path: str | Path, split: str = "training"):
    """Add TRL's ref_chosen_logps / ref_rejected_logps columns; a row without an entry is an error naming it."""
    from datasets import Value

    chosen, rejected = [], []
    for index, key in enumerate(pair_keys(dataset)):
        if key not in data:
            raise ValueError(
                f"precomputed file {path}: row {index} of the {split} data ({_describe_row(dataset, index)}) has no "
                "entry; run scripts/precompute_ref_logprobs.py with this recipe to add the missing rows"
            )
        # Dropped pairs get NaN: TRL drops them again (same max_length, checked), the trainer checks none is left.
        c, r = data.logps.get(key, (float("nan"), float("nan")))
        chosen.append(c)
        rejected.append(r)
    dataset = dataset.add_column(REF_COLUMNS[0], chosen, feature=Value("float32"))
    return dataset.add_column(REF_COLUMNS[1], rejected, feature=Value("float32"))


def compute_ref_logps(model, tokenizer, training_args, datasets_to_do, path, data: RefLogps,
                      dependencies: Mapping[str, Any], chunk_rows: int = 20_000) -> RefLogps:
    """Run TRL's own reference pass over the pairs not yet in `data`, saving the file after every chunk.

    A DPOTrainer built on the reference model with precompute_ref_log_probs=True and ref_model=None computes the
    log-probs with that model, exactly as it does before training; so the numbers are those of online-reference
    training, up to the float noise a different batch shape may bring (none measured on CPU).
    """
    import datasets as hf_datasets

    rows = hf_datasets.concatenate_datasets(datasets_to_do) if len(datasets_to_do) > 1 else datasets_to_do[0]
    keep = ["prompt", "chosen", "rejected"]
    rows = rows.select_columns(keep).add_column("chatalign_pair_key", pair_keys(rows))
    seen, todo = set(), []
    for index, key in enumerate(rows["chatalign_pair_key"]):
        if key not in data and key not in seen:
            seen.add(key)
            todo.append(index)
    logger.info("reference log-probs: %d unique pairs to compute, %d already in %s", len(todo), len(data), path)
    if not todo:
        return data
    args = copy.deepcopy(training_args)
    args.precompute_ref_log_probs = True
    args.report_to = []
    args.eval_strategy = "no"  # this trainer only runs the reference pass; every split goes through it as "train"
    batch_size = args.precompute_ref_batch_size or args.per_device_train_batch_size
    trainer = None
    for start in range(0, len(todo), chunk_rows):
        part = rows.select(todo[start : start + chunk_rows])
        if trainer is None:  # TRL computes the first chunk while it builds the trainer
            trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=part, processing_class=tokenizer)
            done = trainer.train_dataset
        else:
            done = trainer._precompute_ref_logps(trainer._prepare_dataset(part, tokenizer, args, "train"), "train",
                                                 batch_size)
        computed = dict(zip(done["chatalign_pair_key"], zip(done[REF_COLUMNS[0]], done[REF_COLUMNS[1]],
                                                            strict=True), strict=True))
        data.logps.update(computed)
        data.dropped.update(k for k in part["chatalign_pair_key"] if k not in computed)
        if trainer.accelerator.is_main_process:
            write_ref_logps_file(path, data, dependencies)
        logger.info("reference log-probs: %d / %d pairs done (%d dropped by max_length)",
                    min(start + chunk_rows, len(todo)), len(todo), len(data.dropped))
    return data


# --------------------------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator plus the per-pair weight (1.0 when the rows carry none)."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        out[PAIR_WEIGHT] = torch.tensor([float(e.get(PAIR_WEIGHT, 1.0)) for e in examples])
        return out


def per_pair_losses(loss_type: str, trainer, chosen_scores, rejected_scores, chosen_logratios, rejected_logratios,
                    completion_mask):
    """TRL 1.16's per-pair loss of one separable loss type, written as in `DPOTrainer._compute_loss` (same float
    operations in the same order, so weights of 1 reproduce TRL's loss bit for bit)."""
    beta = trainer.beta
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta_score)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type in ("ipo", "sigmoid_norm"):
        chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
        chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)
        rejected_avg_score = rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)
        delta = chosen_avg_score - rejected_avg_score
        return (delta - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * delta)
    if loss_type == "exo_pair":
        epsilon = torch.tensor(trainer.label_smoothing, device=delta_score.device)
        qw, log_qw = torch.sigmoid(beta * delta_score), F.logsigmoid(beta * delta_score)
        ql, log_ql = torch.sigmoid(-beta * delta_score), F.logsigmoid(-beta * delta_score)
        return qw * (log_qw - torch.log1p(-epsilon)) + ql * (log_ql - torch.log(epsilon))
    if loss_type == "nca_pair":
        chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
        return (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
                - 0.5 * F.logsigmoid(-rejected_rewards))
    if loss_type == "robust":
        smoothing = trainer.label_smoothing
        clean_loss_term = -(1 - smoothing) * F.logsigmoid(beta * delta_score)
        flipped_loss_term = -smoothing * F.logsigmoid(-beta * delta_score)
        return (clean_loss_term - flipped_loss_term) / (1 - 2 * smoothing)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-(beta * rejected_logratios))
    if loss_type == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        margin = chosen_logratios - rejected_logratios
        return torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * margin))
    if loss_type == "discopop":
        logits = delta_score * beta
        modulation = torch.sigmoid(logits / trainer.args.discopop_tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    reason = UNWEIGHTABLE_LOSS_TYPES.get(loss_type, "not a TRL DPO loss")
    raise ValueError(f"loss_type '{loss_type}' has no per-pair form: {reason}")


class ChatalignDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer plus two things.

    * Given reference log-probs: with precompute_ref_log_probs=True, a dataset that already carries
      ref_chosen_logps / ref_rejected_logps is used as is (TRL would recompute and then fail on duplicate
      columns), so no reference model is ever loaded.
    * weighted=True: each pair's loss is multiplied by its weight (column PAIR_WEIGHT, 1.0 where absent)
      before the batch mean, for every loss type with a per-pair form (not aot, aot_unpaired, sft). TRL's
      loss is computed inline, so `_compute_loss` is re-expressed here with the same operations; the logged
      metrics are TRL's.
    """

    def __init__(self, *args, weighted: bool = False, **kwargs):
        self.weighted = weighted
        if weighted:
            if args or "args" not in kwargs or "processing_class" not in kwargs:
                raise TypeError("ChatalignDPOTrainer(weighted=True) takes model, args, processing_class, ... as "
                                "keyword arguments")
            bad = [t for t in kwargs["args"].loss_type if t in UNWEIGHTABLE_LOSS_TYPES]
            if bad:
                raise ValueError(f"per-pair weights do not apply to loss_type '{bad[0]}': "
                                 f"{UNWEIGHTABLE_LOSS_TYPES[bad[0]]}")
            if kwargs.get("data_collator") is None:
                tokenizer = getattr(kwargs["processing_class"], "tokenizer", kwargs["processing_class"])
                config = kwargs["args"]
                kwargs["data_collator"] = WeightedPreferenceCollator(
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                    max_length=config.max_length, truncation_mode=config.truncation_mode,
                    pad_to_multiple_of=config.pad_to_multiple_of,
                )  # fmt: skip
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if set(REF_COLUMNS) <= set(dataset.column_names):
            chosen = np.asarray(dataset[REF_COLUMNS[0]], dtype=np.float64)
            if np.isnan(chosen).any():
                index = int(np.flatnonzero(np.isnan(chosen))[0])
                raise ValueError(f"{name} row {index}: the precomputed file marks this pair as dropped by "
                                 "max_length, but this run keeps it; recompute the file")
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.weighted and PAIR_WEIGHT not in self._signature_columns:  # survive remove_unused_columns
            self._signature_columns = [*self._signature_columns, PAIR_WEIGHT]

    def compute_ref_log_probs(self, model, inputs):
        # The precompute pass collates with the weighted collator too; the weight must not reach the model.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != PAIR_WEIGHT})

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.weighted:
            return super()._compute_loss(model, inputs, return_outputs)
        inputs = dict(inputs)
        weight = inputs.pop(PAIR_WEIGHT)
        mode = "train" if self.model.training else "eval"
        non_model = {"completion_mask", *REF_COLUMNS}
        model_kwargs = {k: v for k, v in inputs.items() if k not in non_model}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_completion_mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]
        logps = self._sequence_logps(per_token_logps, shift_completion_mask)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs[REF_COLUMNS[0]], inputs[REF_COLUMNS[1]]
        else:  # the reference model, or the policy with its adapter disabled (PEFT)
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(
                self.ref_model if self.ref_model is not None else self.model, inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        chosen_scores, rejected_scores = self._f_divergence_scores(chosen_logratios, rejected_logratios)

        weight = weight.to(device=chosen_logps.device, dtype=chosen_logps.dtype)
        loss = 0.0
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            per_sequence_loss = per_pair_losses(loss_type, self, chosen_scores, rejected_scores,
                                                chosen_logratios, rejected_logratios, completion_mask)
            if self.use_weighting:  # WPO (TRL's Eq. 2), itself a per-pair factor
                completion_lengths = shift_completion_mask.sum(dim=1).clamp_min(1)
                with torch.no_grad():
                    aligned = (per_token_logps - outputs.log_sum_sq_probs[:, -seq_len:]) * shift_completion_mask
                wpo = torch.exp(aligned.sum(dim=1) / completion_lengths)
                wpo_chosen, wpo_rejected = wpo.chunk(2, dim=0)
                per_sequence_loss *= wpo_chosen * wpo_rejected
            loss += (weight * per_sequence_loss).mean() * loss_weight
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_batch_metrics(mode, inputs, outputs, seq_len, shift_completion_mask, chosen_logps,
                                rejected_logps, chosen_logratios, rejected_logratios)
        if return_outputs:  # as TRL: the fused head built no logits, so compute them for compute_metrics
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _sequence_logps(self, per_token_logps, shift_completion_mask):
        if self.ld_alpha is None:
            return per_token_logps.sum(dim=1)
        # LD-DPO: tokens past the shorter completion of the pair count ld_alpha times.
        comp_pos = shift_completion_mask.cumsum(dim=1)
        comp_lens = shift_completion_mask.sum(dim=1).long()
        chosen_lens, rejected_lens = comp_lens.chunk(2, dim=0)
        shared_lens = torch.minimum(chosen_lens, rejected_lens)
        shared_lens = torch.cat([shared_lens, shared_lens], dim=0).to(per_token_logps.device)
        shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens.unsqueeze(1))
        tail_mask = comp_pos > shared_lens.unsqueeze(1)
        return (per_token_logps * shared_mask).sum(dim=1) + self.ld_alpha * (per_token_logps * tail_mask).sum(dim=1)

    def _f_divergence_scores(self, chosen_logratios, rejected_logratios):
        kind = self.f_divergence_type
        if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(self.f_alpha_divergence_coef - 1.0) < 1e-6):
            return chosen_logratios, rejected_logratios
        if kind == "forward_kl":
            return 1 - torch.exp(-chosen_logratios), 1 - torch.exp(-rejected_logratios)
        if kind == "js_divergence":
            return math.log(2) + F.logsigmoid(chosen_logratios), math.log(2) + F.logsigmoid(rejected_logratios)
        if kind == "alpha_divergence":
            alpha = self.f_alpha_divergence_coef
            coef = 1.0 / (alpha - 1.0)
            out = []
            for logratios in (chosen_logratios, rejected_logratios):
                t = (alpha - 1.0) * logratios
                clamp_max = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0}[t.dtype]
                out.append((torch.exp(torch.clamp(t.float(), max=clamp_max)) - 1.0).to(t.dtype) * coef)
            return out[0], out[1]
        raise ValueError(f"Unknown f_divergence_type: {kind}")

    def _log_batch_metrics(self, mode, inputs, outputs, seq_len, shift_completion_mask, chosen_logps,
                           rejected_logps, chosen_logratios, rejected_logratios):
        """TRL's per-batch metrics, computed as in `DPOTrainer._compute_loss`."""
        gather_sum = lambda value: self.accelerator.gather_for_metrics(value).sum()  # noqa: E731
        metrics = self._metrics[mode]
        mask = shift_completion_mask
        entropy_sum = gather_sum((outputs.entropy[:, -seq_len:].detach() * mask).sum())
        total_tokens = gather_sum(mask.sum())
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather_sum(inputs["attention_mask"].sum()).item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_mean_logits, rejected_mean_logits = outputs.mean_logits[:, -seq_len:].chunk(2, dim=0)
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)
        for name, mean_logits, part_mask in (("chosen", chosen_mean_logits, chosen_mask),
                                             ("rejected", rejected_mean_logits, rejected_mask)):
            total_logits = gather_sum(mean_logits[part_mask.bool()].sum()).item()
            total = gather_sum(part_mask.sum()).item()
            metrics[f"logits/{name}"].append(total_logits / total if total > 0 else 0.0)
        chosen_is_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        correct = gather_sum((chosen_is_top1 & chosen_mask.bool()).sum())
        total = gather_sum(chosen_mask.sum())
        metrics["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps).mean().item())
