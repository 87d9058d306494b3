"""SFT rows rendered by chatalign: ``messages`` -> ``input_ids`` + assistant-only ``labels``, overflow counted."""

from __future__ import annotations

import logging
from collections import Counter

from chatalign.data.rendering import IGNORE_INDEX, render_conversation
from chatalign.train.run import count_summary

logger = logging.getLogger(__name__)


def sft_renderer(tokenizer, max_length: int | None, with_full_length: bool = False):
    """A batched `Dataset.map` function: `messages` (and `tools`) -> `input_ids`, `labels`, cut to max_length."""

    def render(batch):
        out = {"input_ids": [], "labels": []}
        if with_full_length:
            out["_full_length"] = []
        for i, messages in enumerate(batch["messages"]):
            tools = batch["tools"][i] if "tools" in batch else None
            ids, labels = render_conversation(tokenizer, messages, tools=tools or None)
            if with_full_length:
                out["_full_length"].append(len(ids))
            out["input_ids"].append(ids[:max_length] if max_length is not None else ids)
            out["labels"].append(labels[:max_length] if max_length is not None else labels)
        return out

    return render


def tokenize_sft(dataset, tokenizer, max_length: int | None, overflow: str = "truncate", split: str = "train",
                 keep_columns=()):
    """Render `messages` rows to `input_ids` + `labels` (assistant tokens only); count what max_length cuts.

    Returns the tokenized dataset and counts: rows truncated, rows dropped as too long (overflow='drop'), rows
    dropped because no assistant token survived. Nothing is dropped silently. `keep_columns` are carried through
    (e.g. prompt_id, to know which rows were kept).
    """
    render = sft_renderer(tokenizer, max_length, with_full_length=True)
    tokenized = dataset.map(render, batched=True,
                            remove_columns=[c for c in dataset.column_names if c not in keep_columns],
                            desc=f"rendering {split} conversations")
    full = tokenized["_full_length"]
    too_long = [n > max_length for n in full] if max_length is not None else [False] * len(full)
    trainable = [any(x != IGNORE_INDEX for x in labels) for labels in tokenized["labels"]]
    counts = Counter()
    keep = []
    for i, (long_row, has_target) in enumerate(zip(too_long, trainable, strict=True)):
        if long_row and overflow == "drop":
            counts["dropped: longer than max_length"] += 1
        elif not has_target:
            counts["dropped: no assistant token within max_length" if long_row else "dropped: no assistant turn"] += 1
        else:
            counts["truncated to max_length" if long_row else "kept whole"] += 1
            keep.append(i)
    if len(keep) < len(tokenized):
        tokenized = tokenized.select(keep)
    tokenized = tokenized.remove_columns("_full_length")
    logger.info("%s rows after rendering (max_length=%s, overflow=%s): %s", split, max_length, overflow,
                count_summary(counts))
    if len(tokenized) == 0:
        raise ValueError(f"no {split} row has an assistant token within max_length={max_length}: {dict(counts)}")
    return tokenized, dict(counts)
