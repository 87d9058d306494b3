"""Padding-free preference and KTO batches: every sequence of a batch in one flattened row, and the per-token
outputs of that row's forward put back in the padded layout the trainers' loss code reads.

A padded DPO batch is [2B, L] (chosen rows, then rejected rows) with about half of it padding on real data; the
flattened batch is one row [1, sum of lengths] whose `position_ids` restart at 0 for each sequence, so attention
stays within a sequence (sdpa: transformers builds the block-causal mask from the position ids; flash and
chatalign's varlen attention: `cu_seq_lens_q/k`, `max_length_q/k`, given here so no kernel derives them itself).
The labels are -100 outside completions and at each sequence start (whose previous position is another sequence).

The fused LM head scores the flattened row; `to_padded` gathers its per-token log-probs (and entropy, mean logits,
top-1 hits, WPO's log sum p^2) back to [N, L-1], zero past each sequence's end, exactly where the padded forward puts
them. The loss, per-pair weights, LD-DPO, WPO and TRL's metrics then run unchanged on that layout: `FlatForward`
stands in for the model in code written for padded batches, and `padded_layout` gives that code the padded
input_ids / attention_mask / completion_mask it reads for shapes, masks and token counts (never for a forward).

Batch keys (`prefix` "" or, for KTO's mismatched KL completions, "KL_"): input_ids, position_ids, completion_mask
[1, T]; seq_lens [N]; cu_seq_lens_q/k [N + 1] (int32); max_length_q/k (int). Truncation to max_length is the padded
collators' (TRL's DataCollatorForPreference / ForUnpairedPreference), so both paths score the same tokens.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch
from transformers.data.data_collator import DataCollatorMixin

FLAT_KEYS = ("input_ids", "position_ids", "completion_mask", "seq_lens", "cu_seq_lens_q", "cu_seq_lens_k",
             "max_length_q", "max_length_k")
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
PER_TOKEN_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps", "ref_KL_logps")


# --------------------------------------------------------------------------------------------------------------------
# Collators


def truncate(ids: list[int], mask: list[int], max_length: int | None, truncation_mode: str = "keep_start"):
    """TRL's per-sequence truncation (DataCollatorForPreference): keep the first or the last max_length tokens."""
    if max_length is None:
        return ids, mask
    if truncation_mode == "keep_start":
        return ids[:max_length], mask[:max_length]
    if truncation_mode == "keep_end":
        return ids[-max_length:], mask[-max_length:]
    raise ValueError(f"Unsupported truncation mode: {truncation_mode}, expected 'keep_start' or 'keep_end'")


def flatten(sequences: list[list[int]], completion_masks: list[list[int]], prefix: str = "") -> dict:
    """One flattened row of `sequences` (prompt + completion token lists) with their completion masks."""
    lengths = [len(ids) for ids in sequences]
    cu_seq_lens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    completion_mask = [m for mask in completion_masks for m in mask]
    return {
        f"{prefix}input_ids": torch.tensor([t for ids in sequences for t in ids], dtype=torch.long)[None],
        f"{prefix}position_ids": torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])[None],
        f"{prefix}completion_mask": torch.tensor(completion_mask, dtype=torch.long)[None],
        f"{prefix}seq_lens": torch.tensor(lengths, dtype=torch.long),
        f"{prefix}cu_seq_lens_q": cu_seq_lens, f"{prefix}cu_seq_lens_k": cu_seq_lens,
        f"{prefix}max_length_q": max(lengths), f"{prefix}max_length_k": max(lengths),
    }  # fmt: skip


@dataclass
class PaddingFreePreferenceCollator(DataCollatorMixin):
    """The padding-free DataCollatorForPreference: the batch's chosen sequences, then its rejected ones (each
    prompt + completion, truncated as TRL's collator does), in one row; reference log-probs as TRL's."""

    max_length: int | None = None
    truncation_mode: str = "keep_start"
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict]) -> dict:
        sequences, masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for example in examples:
                prompt, completion = example["prompt_ids"], example[key]
                ids, mask = truncate(prompt + completion, [0] * len(prompt) + [1] * len(completion),
                                     self.max_length, self.truncation_mode)
                sequences.append(ids)
                masks.append(mask)
        output = flatten(sequences, masks)
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            if name in examples[0]:
                output[name] = torch.tensor([example[name] for example in examples])
        return output


@dataclass
class PaddingFreeUnpairedCollator(DataCollatorMixin):
    """The padding-free DataCollatorForUnpairedPreference (KTO): the completions in one row and, where the rows
    carry them, the KL completions (prompt i with completion i-1) in a second row under the "KL_" keys."""

    max_length: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict]) -> dict:
        output = {}
        for prefix, key in (("", "completion_ids"), ("KL_", "KL_completion_ids")):
            if key not in examples[0]:
                continue
            sequences, masks = [], []
            for example in examples:
                prompt, completion = example["prompt_ids"], example[key]
                ids, mask = truncate(prompt + completion, [0] * len(prompt) + [1] * len(completion), self.max_length)
                sequences.append(ids)
                masks.append(mask)
            output.update(flatten(sequences, masks, prefix))
        for name in ("ref_logps", "ref_KL_logps"):
            if name in examples[0]:
                output[name] = torch.tensor([example[name] for example in examples])
        output["label"] = torch.tensor([example["label"] for example in examples])
        return output


# --------------------------------------------------------------------------------------------------------------------
# From the flattened row back to the padded layout


def is_flat(batch, prefix: str = "") -> bool:
    """Whether `batch` came from a padding-free collator."""
    return f"{prefix}seq_lens" in batch


def to_padded(flat: torch.Tensor, seq_lens: torch.Tensor, width: int, shifted: bool = True) -> torch.Tensor:
    """[1, T] (or the fused head's [1, T-1], `shifted`) values of the flattened row as [N, width] rows, zero (False)
    past each sequence's end. Shifted: position j of row i is the prediction of token j+1 of sequence i, the layout
    of the padded forward's `log_probs[:, -(L-1):]` (width L-1); the flattened row's last position of a sequence
    (predicting the next sequence's first token) is dropped."""
    seq_lens = seq_lens.to(flat.device)
    starts = torch.cumsum(seq_lens, 0) - seq_lens
    offsets = torch.arange(width, device=flat.device)
    valid = offsets[None] < (seq_lens - 1 if shifted else seq_lens)[:, None]
    index = (starts[:, None] + offsets[None]).clamp(max=max(flat.size(-1) - 1, 0))
    gathered = flat.reshape(-1)[index] if flat.numel() else flat.new_zeros(index.shape)
    return gathered.masked_fill(~valid, 0)


def flat_labels(batch, prefix: str = "") -> torch.Tensor:
    """Completion tokens as labels, -100 elsewhere and at every sequence start."""
    p = prefix
    return batch[f"{p}input_ids"].masked_fill((batch[f"{p}completion_mask"] == 0) | (batch[f"{p}position_ids"] == 0),
                                              -100)


def padded_layout(batch, prefixes: tuple[str, ...] = ("",)) -> dict:
    """The padded batch the loss code reads (input_ids padded with 0, attention_mask, completion_mask per prefix),
    plus every key of `batch` that is not part of a flattened row (reference log-probs, labels, pair weights)."""
    flat_keys = {f"{p}{k}" for p in prefixes for k in FLAT_KEYS}
    out = {k: v for k, v in batch.items() if k not in flat_keys}
    for p in prefixes:
        seq_lens, width = batch[f"{p}seq_lens"], int(batch[f"{p}max_length_q"])
        out[f"{p}input_ids"] = to_padded(batch[f"{p}input_ids"], seq_lens, width, shifted=False)
        out[f"{p}attention_mask"] = (torch.arange(width, device=seq_lens.device)[None] < seq_lens[:, None]).long()
        out[f"{p}completion_mask"] = to_padded(batch[f"{p}completion_mask"], seq_lens, width, shifted=False)
    return out


def padded_outputs(outputs, seq_lens: torch.Tensor, width: int, n_positions: int):
    """The fused head's output of a flattened row (`n_positions` = its length - 1 scored positions) with every
    per-token field in the padded layout [N, width-1]."""
    fields = {}
    for name, value in outputs.items():
        if name in PER_TOKEN_OUTPUTS:  # prompt-learning PEFT prepends virtual tokens: keep the real positions (as TRL)
            value = to_padded(value[:, -n_positions:] if n_positions else value[:, :0], seq_lens, width - 1)
        fields[name] = value
    return type(outputs)(**fields)


def flat_forward(model, batch, prefix: str = "", fused_lm_head: bool = True, **kwargs):
    """The model on the flattened row under `prefix`: with the fused head, its per-token outputs in the padded
    layout; without, the model's own output (logits [1, T, V], as compute_metrics gets them)."""
    p = prefix
    model_kwargs = {"input_ids": batch[f"{p}input_ids"], "position_ids": batch[f"{p}position_ids"],
                    **{k: batch[f"{p}{k}"] for k in VARLEN_KEYS if f"{p}{k}" in batch}, "use_cache": False, **kwargs}
    if not fused_lm_head:
        return model(**model_kwargs)
    outputs = model(**model_kwargs, labels=flat_labels(batch, p), fused_lm_head=True)
    return padded_outputs(outputs, batch[f"{p}seq_lens"], int(batch[f"{p}max_length_q"]),
                          batch[f"{p}input_ids"].size(1) - 1)


class FlatForward:
    """Stands in for `model` in code written for padded batches (TRL's `_compute_loss`): called as that code calls
    the model, it runs the model on the flattened batch instead; the padded input_ids / attention_mask / labels it
    is given are ignored (they describe the same tokens), every other keyword goes to the model."""

    def __init__(self, model, batch):
        self.model, self.batch = model, batch

    def __call__(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        return flat_forward(self.model, self.batch, fused_lm_head=fused_lm_head, **kwargs)

    def part(self, prefix: str, **kwargs):
        """The fused-head forward of another flattened row of the batch (KTO's "KL_")."""
        return flat_forward(self.model, self.batch, prefix, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Reference forwards


@contextlib.contextmanager
def reference_in_batch(trainer):
    """TRL's loss reads the reference log-probs from the batch when precompute_ref_log_probs is set: while the
    padding-free path hands it reference log-probs it computed on the flattened batch, say so."""
    saved = trainer.precompute_ref_logps
    trainer.precompute_ref_logps = True
    try:
        yield
    finally:
        trainer.precompute_ref_logps = saved


@contextlib.contextmanager
def reference_forward(trainer):
    """The contexts of TRL's `compute_ref_log_probs`: no gradient, gradient checkpointing off, autocast, and with PEFT
    and no reference model the adapter disabled (or the adapter named "ref" active)."""
    from accelerate.utils import is_peft_model
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    adapter = contextlib.nullcontext()
    if trainer.ref_model is None and is_peft_model(trainer.model):
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
    with (torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs),
          adapter, trainer.accelerator.autocast()):
        yield
