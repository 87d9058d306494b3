"""Prepared (rendered and tokenized) datasets kept on disk, keyed by a hash of everything they depend on.

A second run with the same rows, tokenizer, chat template and settings loads the prepared rows from
``<cache_dir | $CHATALIGN_CACHE | ~/.cache/chatalign>/<kind>/<key>/`` (Arrow, memory-mapped) instead of rendering
them again, and says so. The key hashes the rows' Arrow bytes (fast: no row goes through Python), the tokenizer's
full serialisation, its chat template and special tokens, the settings, the versions of chatalign, transformers and
tokenizers, and `PREPARATION_VERSION` (raised whenever the preparation code changes what it writes). datasets' own map cache is no help here: a mixture is built in memory,
so it has no cache files and a fresh fingerprint every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from chatalign.data.tokenizers import tokenizer_fingerprint
from chatalign.store import cache_root, content_hash

logger = logging.getLogger(__name__)

PREPARATION_VERSION = 1
COUNTS_FILE = "chatalign_counts.json"


def rows_hash(dataset, columns: Sequence[str]) -> str:
    """sha256 of `columns` of `dataset` (their Arrow IPC stream, in row order). Equal hashes mean equal rows; equal
    rows built the same way (a run's mixture, run after run) hash equal. Equal rows laid out differently in Arrow
    (taken by a selection vs built whole) may not: that costs one preparation, never a wrong cache hit."""
    import pyarrow as pa

    # Through the arrow format, so a selection's indices are applied (`.data` would be the table before them).
    table = dataset.select_columns(list(columns)).with_format("arrow")[:].combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(memoryview(sink.getvalue())).hexdigest()


def library_versions() -> dict[str, str]:
    """The code a prepared row depends on besides chatalign's own: transformers renders the template and computes
    the assistant mask, tokenizers encodes. An upgrade of either prepares the rows again."""
    import tokenizers
    import transformers

    import chatalign

    return {"chatalign": chatalign.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def preparation_key(kind: str, dataset, columns: Sequence[str], tokenizer, settings: dict) -> str:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(
        tokenizer.chat_template, sort_keys=True)
    return content_hash({"kind": kind, "version": PREPARATION_VERSION, "libraries": library_versions(),
                         "rows": rows_hash(dataset, columns), "tokenizer": tokenizer_fingerprint(tokenizer),
                         "chat_template": template or "", "settings": settings})[:32]


def cached_preparation(kind: str, dataset, columns: Sequence[str], tokenizer, settings: dict,
                       prepare: Callable[[], tuple], cache_dir: str | Path | None = None, what: str = "rows",
                       write: bool = True):
    """`prepare()` -> (prepared dataset, counts dict), computed once per key and loaded from the cache after.
    `write=False` (a process other than the main one) reads the cache but never writes it. Returns (dataset, counts,
    loaded: bool)."""
    from datasets import load_from_disk

    folder = cache_root(cache_dir) / kind / preparation_key(kind, dataset, columns, tokenizer, settings)
    if (folder / COUNTS_FILE).exists():
        prepared = load_from_disk(str(folder))
        counts = json.loads((folder / COUNTS_FILE).read_text())
        logger.info("%s: loaded %d prepared rows from %s (same rows, tokenizer and settings)", what, len(prepared),
                    folder)
        return prepared, counts, True
    prepared, counts = prepare()
    if not write:
        return prepared, counts, False
    # Written to a sibling folder and renamed: an interrupted save leaves no half cache behind.
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    try:
        prepared.save_to_disk(str(partial))
        (partial / COUNTS_FILE).write_text(json.dumps(counts, sort_keys=True))
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, folder)
    except OSError as error:  # a full or read-only disk costs the next run a preparation, never this run
        logger.warning("%s: could not cache the prepared rows in %s (%s)", what, folder, error)
        shutil.rmtree(partial, ignore_errors=True)
        return prepared, counts, False
    logger.info("%s: prepared rows cached in %s", what, folder)
    return load_from_disk(str(folder)), counts, False
