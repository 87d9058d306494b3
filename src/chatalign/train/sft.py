"""SFT rows rendered by chatalign: ``messages`` -> ``input_ids`` + assistant-only ``labels``, overflow counted; the
recipe keys of run_sft and the TRL SFTConfig keys that chatalign's own rendering decides instead."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from chatalign.configs import ConfigError
from chatalign.data.dataset_cache import cached_preparation
from chatalign.data.rendering import IGNORE_INDEX, render_conversations
from chatalign.train.run import PreparedDataArguments, count_summary

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(PreparedDataArguments):
    """Recipe keys of run_sft beyond TRL's SFTConfig."""

    overflow: Literal["truncate", "drop"] = field(
        default="truncate", metadata={"help": "Rows longer than max_length: 'truncate' (keep the start) or 'drop'."}
    )
    mask_user_labels: bool = field(
        default=True,
        metadata={"help": "true: train on the assistant replies only (system, user and tool turns masked). false: "
                          "train on every token of the conversation (LION's mask_user_labels: false)."},
    )


def check_sft_arguments(training_args, data_args, script_args, given: Mapping[str, str]) -> None:
    """Before anything loads: map the SFTConfig keys that chatalign's rendering makes TRL ignore onto chatalign's own
    settings, or reject them; refuse combinations that would not do what they say. `given` maps each key the recipe or
    command line set to where it came from (ChatalignParser.sources)."""
    if getattr(training_args, "truncation_mode", "keep_start") != "keep_start":
        # chatalign renders and cuts conversations itself, keeping the start (system prompt and first turns)
        raise ConfigError(f"truncation_mode={training_args.truncation_mode!r}: run_sft keeps the start of each "
                          "conversation; use overflow: drop to skip long rows instead")
    for key, why in (("eos_token", "the chat template decides how a turn ends; pick or edit the template instead"),
                     ("dataset_text_field", "chatalign renders conversations from the dataset's messages, it reads no "
                                            "text field; give a dataset_format for the source instead")):
        if key in given:
            raise ConfigError(f"key '{key}' in {given[key]}: TRL's {key} has no effect in run_sft: {why}")
    if "chat_template_path" in given:
        path = training_args.chat_template_path
        if "chat_template" in given and data_args.chat_template != path:
            raise ConfigError(f"chat_template ({data_args.chat_template!r}) and chat_template_path ({path!r}) name "
                              "two templates; give chat_template only")
        data_args.chat_template = path  # the template training renders with is the one the checkpoint keeps
    training_args.chat_template_path = None
    # TRL's two loss-mask switches say what mask_user_labels says; chatalign's rendering applies it.
    for key in ("assistant_only_loss", "completion_only_loss"):
        if key not in given:
            continue
        wanted = bool(getattr(training_args, key))
        if "mask_user_labels" in given and script_args.mask_user_labels != wanted:
            raise ConfigError(f"{key}={wanted} in {given[key]} contradicts mask_user_labels="
                              f"{script_args.mask_user_labels} in {given['mask_user_labels']}")
        script_args.mask_user_labels = wanted
        given = {**given, "mask_user_labels": given[key]}
    training_args.assistant_only_loss, training_args.completion_only_loss = False, None  # labels come rendered
    if data_args.resample_each_epoch:
        if script_args.overflow == "drop":
            raise ConfigError("resample_each_epoch with overflow: drop: dropping rows would change the per-source "
                              "sizes every epoch redraws; use overflow: truncate")
        if training_args.packing:
            raise ConfigError("resample_each_epoch with packing: TRL packs the first epoch's rows once, so later "
                              "epochs would not be packed; use padding_free instead")


def sft_renderer(tokenizer, max_length: int | None, with_full_length: bool = False, mask_user_labels: bool = True):
    """A batched `Dataset.map` function: `messages` (and `tools`) -> `input_ids`, `labels`, cut to max_length;
    without mask_user_labels every token is a label. Each map batch is rendered and tokenized in one call
    (chatalign.data.rendering.render_conversations)."""

    def render(batch):
        out = {"input_ids": [], "labels": []}
        if with_full_length:
            out["_full_length"] = []
        rendered = render_conversations(tokenizer, batch["messages"], batch.get("tools"))
        for ids, labels in rendered:
            if not mask_user_labels:
                labels = list(ids)
            if with_full_length:
                out["_full_length"].append(len(ids))
            out["input_ids"].append(ids[:max_length] if max_length is not None else ids)
            out["labels"].append(labels[:max_length] if max_length is not None else labels)
        return out

    return render


def tokenize_sft(dataset, tokenizer, max_length: int | None, overflow: str = "truncate", split: str = "train",
                 keep_columns=(), mask_user_labels: bool = True, cache_dir: str | None = None, use_cache: bool = True,
                 num_proc: int | None = None):
    """Render `messages` rows to `input_ids` + `labels` (assistant tokens only); count what max_length cuts.

    Returns the tokenized dataset and counts: rows truncated, rows dropped as too long (overflow='drop'), rows
    dropped because no assistant token survived. Nothing is dropped silently. `keep_columns` are carried through
    (e.g. prompt_id, to know which rows were kept). With `use_cache`, the result is kept under `cache_dir`
    (chatalign.data.dataset_cache) and a later call with the same rows, tokenizer and settings loads it.
    `num_proc` > 1 renders in that many processes (on 2 cores one process is faster: the tokenizer has threads).
    """
    def prepare():
        return _render_and_count(dataset, tokenizer, max_length, overflow, split, keep_columns, mask_user_labels,
                                 num_proc)

    if not use_cache:
        tokenized, counts = prepare()
    else:
        columns = [c for c in ("messages", "tools", *keep_columns) if c in dataset.column_names]
        settings = {"max_length": max_length, "overflow": overflow, "mask_user_labels": mask_user_labels,
                    "keep_columns": list(keep_columns)}
        tokenized, counts, loaded = cached_preparation("sft_tokens", dataset, columns, tokenizer, settings, prepare,
                                                       cache_dir, what=f"{split} conversations")
        if loaded:
            logger.info("%s rows (max_length=%s, overflow=%s): %s", split, max_length, overflow,
                        count_summary(Counter(counts)))
    if len(tokenized) == 0:
        raise ValueError(f"no {split} row has an assistant token within max_length={max_length}: {dict(counts)}")
    return tokenized, dict(counts)


def _render_and_count(dataset, tokenizer, max_length, overflow, split, keep_columns, mask_user_labels, num_proc):
    render = sft_renderer(tokenizer, max_length, with_full_length=True, mask_user_labels=mask_user_labels)
    tokenized = dataset.map(render, batched=True, num_proc=num_proc if num_proc and num_proc > 1 else None,
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
    return tokenized, dict(counts)
