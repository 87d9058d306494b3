"""TRL's DPO and KTO dataset preparation (prompt extraction, chat rendering, tokenization, length handling) kept on
disk by chatalign.data.dataset_cache, as run_sft's is: a second run with the same rows, tokenizer, template and
preparation settings loads the tokenized rows and says so.

TRL's trainers prepare inside __init__ with datasets' map, whose own cache misses for an in-memory mixture (a fresh
fingerprint every run). The key holds the TRL version, since TRL's code decides what the rows become, and the
settings each trainer's preparation reads (`preparation_settings`). Every process prepares on a miss, as TRL does
without a cache; only the main process writes, after TRL's own barrier, so no process can find a cache that another
one is still writing and the processes never wait on each other at different points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from chatalign.data.dataset_cache import cached_preparation

# Raised whenever chatalign's part of a trainer's preparation changes what it writes.
TRAINER_PREPARATION_VERSION = 1


def cached_trainer_dataset(trainer, kind: str, dataset, processing_class, dataset_name: str, settings: Mapping,
                           prepare: Callable[[], tuple]):
    """`prepare()` -> (prepared dataset, counts dict), run through the cache (`<cache>/<kind>/<key>/`) when the
    trainer was built with cache_prepared_data (an IterableDataset is never cached). Returns (dataset, counts)."""
    import trl
    from accelerate import PartialState
    from datasets import Dataset

    if not getattr(trainer, "cache_prepared_data", False) or not isinstance(dataset, Dataset):
        return prepare()
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    key_settings = {**settings, "trainer": type(trainer).__name__, "split": dataset_name, "trl": trl.__version__, "version": TRAINER_PREPARATION_VERSION}
    prepared, counts, _ = cached_preparation(
        kind, dataset, dataset.column_names, tokenizer, key_settings, prepare, trainer.prepared_data_cache_dir,
        what=f"{dataset_name} rows", write=PartialState().is_main_process)
    return prepared, counts
