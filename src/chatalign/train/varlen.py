"""Variable-length ("varlen") attention for flattened, padding-free batches, without flash-attn.

A flattened batch is one row of shape [1, T] holding several sequences, with `position_ids` restarting at 0 at each
sequence (TRL's padding-free collators; they may also give `cu_seq_lens_q` / `cu_seq_lens_k`, as flash-attn uses).
Under transformers' "sdpa", such a batch gets one dense T x T block-causal mask (masking_utils' packed-sequence mask),
so attention costs O(T^2) however short the sequences are. The implementation registered here as
``chatalign_varlen`` runs torch's scaled_dot_product_attention once per sequence with ``is_causal=True`` instead:
its cost grows with the sum of the squared sequence lengths, and no T x T mask is ever built. Every other batch
(a padded batch with an attention mask, a cache, one sequence per row, a sliding window, a bidirectional model) goes
to transformers' own sdpa function and mask unchanged, so it gives sdpa's exact result.

Importing this module registers both the attention function (transformers' AttentionInterface) and its mask
function (AttentionMaskInterface); load a model with ``attn_implementation="chatalign_varlen"`` afterwards.

Like flash_attention_2, it reads the sequence boundaries from the `position_ids` (or `cu_seq_lens_*`) that the
decoder layer passes on to its attention function, which every transformers model that supports padding-free
flash-attn does. A new sequence starts wherever the position does not go up by exactly 1, the rule transformers'
own packed mask uses (`find_packed_sequence_indices`), so both paths split a batch identically.

Alternatives considered (torch 2.13, CPU):
- torch.nn.attention.varlen.varlen_attn is Flash Attention: CUDA only, fp16/bf16 only, so it cannot serve the CPU
  fp32 path nor be exact against fp32 sdpa.
- flex_attention with a document block mask (measured on this CPU, 8 sequences, T=2410, 4 heads of 64): it has no
  backward on CPU at all (torch 2.13 raises NotImplementedError, compiled or not), so it cannot train here. Forward
  only, eager flex_attention is 14x slower than per-sequence sdpa (it materialises the scores), and compiled it is
  5x faster and exact to 1e-6 but the first call compiles for 23 s (and a new T can compile again). On a GPU, transformers'
  own "flex_attention" implementation remains available by name. Per-sequence sdpa needs no compiler, trains, and
  reuses sdpa's kernels, so its results match sdpa's own.
"""

from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

VARLEN_ATTENTION = "chatalign_varlen"


def sequence_boundaries(position_ids: torch.Tensor) -> list[list[int]] | None:
    """Per row of `position_ids` [B, T] (or [T]), the offsets where its sequences start plus T: [[0, 5, 9, T], ...];
    None when every row holds a single sequence. A sequence starts where the position does not go up by exactly 1."""
    if position_ids.ndim == 1:
        position_ids = position_ids[None]
    step = torch.diff(position_ids, dim=-1) != 1
    if not bool(step.any()):
        return None
    length = position_ids.shape[-1]
    starts = torch.nn.functional.pad(step, (1, 0), value=True)
    rows = [[] for _ in range(position_ids.shape[0])]
    for row, start in starts.nonzero().tolist():
        rows[row].append(start)
    return [row + [length] for row in rows]


def boundaries_from_cu_seq_lens(cu_seq_lens: torch.Tensor, length: int) -> list[list[int]] | None:
    """flash-attn's cumulative lengths [0, l1, l1+l2, ..., T] of a flattened row as one row of boundaries; None for
    a single sequence. They must cover exactly the row's `length` tokens."""
    bounds = [int(x) for x in cu_seq_lens.tolist()]
    if bounds[0] != 0 or bounds[-1] != length or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"cu_seq_lens {bounds} do not split a row of {length} tokens into non-empty sequences")
    return [bounds] if len(bounds) > 2 else None


class _LastBoundaries:
    """Every decoder layer receives the same position_ids (and cu_seq_lens) tensors: find the boundaries once per
    forward pass (one device-to-host copy, not one per layer). Keyed by the tensor objects themselves (weak
    references, so a freed tensor whose memory is reused can never match) and their in-place version counters."""

    def __init__(self):
        self.key, self.shape, self.value = None, None, None

    @staticmethod
    def _matches(key, tensors) -> bool:
        return len(key) == len(tensors) and all(
            (ref is None and t is None) or (ref is not None and ref() is t and t._version == version)
            for (ref, version), t in zip(key, tensors, strict=True))

    def get(self, tensors: tuple, shape: tuple, compute):
        if self.key is not None and self.shape == shape and self._matches(self.key, tensors):
            return self.value
        value = compute()
        self.key = tuple((None, None) if t is None else (weakref.ref(t), t._version) for t in tensors)
        self.shape, self.value = shape, value
        return value


_cache = _LastBoundaries()


def batch_boundaries(batch_size: int, length: int, position_ids=None, cu_seq_lens_q=None, cu_seq_lens_k=None):
    """The sequence boundaries of each row of a [batch_size, length] attention call, or None when every row is one
    sequence. flash-attn's cu_seq_lens (a flattened single row, the same for queries and keys) win over position_ids,
    as they do for flash_attention_2; otherwise position_ids decide."""
    return _cache.get((position_ids, cu_seq_lens_q, cu_seq_lens_k), (batch_size, length), lambda: _boundaries(
        batch_size, length, position_ids, cu_seq_lens_q, cu_seq_lens_k))


def _boundaries(batch_size, length, position_ids, cu_seq_lens_q, cu_seq_lens_k):
    if cu_seq_lens_q is not None and batch_size == 1 and (
            cu_seq_lens_k is None or torch.equal(cu_seq_lens_q.cpu(), cu_seq_lens_k.cpu())):
        return boundaries_from_cu_seq_lens(cu_seq_lens_q, length)
    if position_ids is None or position_ids.shape[-1] != length:
        return None
    bounds = sequence_boundaries(position_ids)
    if bounds is not None and len(bounds) != batch_size:
        if len(bounds) != 1:
            return None
        bounds = bounds * batch_size  # position_ids [1, T] shared by every row
    return bounds


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [B, H, T, D], key/value [B, H_kv, T, D] -> ([B, T, H, D], None).

    Flattened batches (no mask, causal self-attention, several sequences in a row): sdpa per sequence. Anything else:
    transformers' sdpa_attention_forward itself."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    batch, _, length, _ = query.shape
    bounds = None
    if (attention_mask is None and causal and length > 1 and key.shape[2] == length
            and kwargs.get("position_bias") is None):
        bounds = batch_boundaries(batch, length, kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"),
                                  kwargs.get("cu_seq_lens_k"))
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # split, not slicing: the backward of a slice fills a zero tensor of the whole row for every sequence (O(T) per
    # sequence); split's backward is one concatenation
    rows = []
    for b, row in enumerate(bounds):
        lengths = [e - s for s, e in zip(row, row[1:], strict=False)]
        parts = (t[b:b + 1].split(lengths, dim=2) if batch > 1 else t.split(lengths, dim=2) for t in (query, key, value))
        pieces = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True,
                                         **kwargs)[0] for q, k, v in zip(*parts, strict=True)]
        rows.append(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
    return (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]), None


def _closure(fn) -> dict:
    cells = getattr(fn, "__closure__", None) or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells), strict=True))


def is_packed_causal(mask_function) -> bool:
    """Whether a masking_utils mask function is plain causal, or causal within the packed sequences that
    create_causal_mask found in position_ids (and_masks(remap_positions_for_packed_sequence(causal), packed)) and
    nothing more. Anything else (a window, a bidirectional block overlay, a custom pattern, another transformers
    version's composition) is not recognised, and gets sdpa's dense mask: correct, only not faster."""
    if mask_function is causal_mask_function:
        return True
    if not getattr(mask_function, "__qualname__", "").startswith("and_masks."):
        return False
    parts = _closure(mask_function).get("mask_functions", ())
    if len(parts) != 2:
        return False
    remap, packed = parts
    return (remap.__qualname__.startswith("remap_positions_for_packed_sequence.")
            and _closure(remap).get("mask_function") is causal_mask_function
            and packed.__qualname__.startswith("packed_sequence_mask_function."))


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                mask_function=causal_mask_function, attention_mask=None, local_size: int | None = None,
                use_vmap: bool = False, **kwargs):
    """The mask for chatalign_varlen: None (no T x T mask) for a causal self-attention, packed or not, without
    padding, cache or window (the attention splits the sequences from position_ids itself); sdpa's own mask
    otherwise. transformers' packed-sequence detection only happens without a mask and without a cache, so a
    flattened batch always lands in the first case."""
    if (attention_mask is None and "allow_is_bidirectional_skip" not in kwargs and not use_vmap
            and local_size is None and q_length == kv_length and kv_offset == 0
            and isinstance(q_offset, int) and q_offset == 0 and is_packed_causal(mask_function)):
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask, local_size=local_size,
                     use_vmap=use_vmap, **kwargs)


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_mask)
