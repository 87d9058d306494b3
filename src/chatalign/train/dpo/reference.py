"""Precomputed reference log-probs: the file, what it depends on, and TRL's own pass that computes it.

File format (one parquet file, written atomically):
    columns  key: str                 the pair id (chatalign.store.pair_id of prompt, chosen and rejected)
             ref_chosen_logps: float32, ref_rejected_logps: float32
                                      TRL's sums of completion-token log-probs (NaN where dropped)
             dropped: bool            TRL drops the pair in training too (its prompt alone fills max_length)
    schema metadata b"chatalign": JSON {"format": "chatalign-ref-logps/1", "dependency_hash": sha256,
             "dependencies": {reference model path, its config.json hash, its weight-files hash, dtype, mixed
             precision, quantization, tokenizer hash, chat template hash, max_length, truncation_mode,
             ld_alpha}, "rows": n}
A run reuses the file only when every dependency matches; otherwise the first differing one is named.

Without a file named, a run with precompute_ref_log_probs keeps its reference log-probs in a cache keyed by the hash
of those dependencies (``<ref_logps_cache_dir or $CHATALIGN_CACHE or ~/.cache/chatalign>/ref_logps/<hash>.parquet``):
every later run, epoch or recipe with the same reference, tokenizer, template and max_length finds it and computes
only the pairs it lacks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import DPOTrainer

from chatalign.data.tokenizers import tokenizer_fingerprint
from chatalign.store import atomic_path, cache_root, content_hash, pair_id
from chatalign.train.chunked_logps import fit_fused_head_tiles
from chatalign.train.models import reference_revision

logger = logging.getLogger(__name__)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's names for precomputed reference log-probs


FILE_FORMAT = "chatalign-ref-logps/1"
_META_KEY = b"chatalign"


def pair_keys(dataset) -> list[str]:
    """The pair id of every row of a preference dataset."""
    columns = zip(dataset["prompt"], dataset["chosen"], dataset["rejected"], strict=True)
    return [pair_id(prompt, chosen, rejected) for prompt, chosen, rejected in columns]


# --------------------------------------------------------------------------------------------------------------------
# Dependencies of reference log-probs


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
        where, weights_id = str(path.resolve()), content_hash({p.name: _file_fingerprint(p) for p in weights})
    else:
        from transformers.utils import cached_file

        folder = Path(cached_file(name_or_path, "config.json", revision=revision)).parent  # .../snapshots/<commit>
        where, weights_id = f"{name_or_path}@{revision or 'main'}", f"hub commit {folder.name}"
    config = json.loads((folder / "config.json").read_text())
    for volatile in ("_name_or_path", "transformers_version"):
        config.pop(volatile, None)
    return {"model": where, "model_config": content_hash(config), "model_weights": weights_id}


def reference_dependencies(model_args, training_args, script_args, tokenizer) -> dict[str, Any]:
    """Everything the reference log-probs depend on, in the order mismatches are reported."""
    name = script_args.ref_model_name_or_path or model_args.model_name_or_path
    revision = reference_revision(model_args, script_args.ref_model_name_or_path, script_args.ref_model_revision)
    mixed = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
    return {
        **model_fingerprint(name, revision),
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
    meta = {"format": FILE_FORMAT, "dependency_hash": content_hash(dict(dependencies)),
            "dependencies": dict(dependencies), "rows": len(keys)}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
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
    args.padding_free = False  # TRL's stock trainer would only warn and pad; the numbers are the same either way
    fit_fused_head_tiles(args.device)  # a model loaded elsewhere would otherwise run TRL's GPU-sized tiles on CPU
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


def ref_cache_path(dependencies: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Where reference log-probs with these dependencies live when no precompute_file_path is named."""
    return cache_root(cache_dir) / "ref_logps" / f"{content_hash(dict(dependencies))[:32]}.parquet"


def complete_ref_cache(dependencies: Mapping[str, Any], splits: list, cache_dir: str | Path | None = None) -> Path | None:
    """The cache file of these dependencies if it holds every pair of `splits`, else None (absent or incomplete)."""
    path = ref_cache_path(dependencies, cache_dir)
    if not path.is_file():
        return None
    return None if missing_pair_keys(open_ref_logps_file(path, dependencies), splits) else path


def missing_pair_keys(data: RefLogps, splits: list) -> set[str]:
    """The pair ids of `splits` that `data` holds no reference log-probs for."""
    return {key for split in splits for key in pair_keys(split) if key not in data}


def ensure_ref_logps(path: str | Path, dependencies: Mapping[str, Any], splits: list, tokenizer, training_args,
                     load_reference) -> tuple[RefLogps, int]:
    """The reference log-probs of every pair of `splits` in the file at `path` (matching `dependencies`), computing
    only the missing ones; `load_reference()` loads the reference model, called only when some pair is missing.
    Returns the contents and how many pairs this call computed."""
    path = Path(path)
    data = open_ref_logps_file(path, dependencies) if path.exists() else RefLogps({}, set(), {})
    missing = missing_pair_keys(data, splits)
    if not missing and path.exists():
        logger.info("reference log-probs of all %d pairs loaded from %s: the reference model is not loaded",
                    sum(len(s) for s in splits), path)
        return data, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_reference()
    model.eval()
    data = compute_ref_logps(model, tokenizer, training_args, splits, path, data, dependencies)
    del model
    return data, len(missing)

