"""The LM head's per-token log-probs in tiles sized for the device: TRL's fused head, fitted to CPUs.

Every trainer chatalign runs (TRL 1.16's SFT, DPO, KTO, GRPO, RLOO) scores labels through TRL's fused LM head
(`trl.trainer.utils.add_fused_lm_head`): [tokens x vocab] tiles of logits that never exist in full, folded into an
online logsumexp, the backward recomputing each tile. Its tiles are sized for its Triton GPU kernel (4,096 tokens x
32,768 vocabulary entries). On a device without Triton it folds each tile with plain torch ops instead, whose fp32
temporaries (several copies of a 512 MiB tile) put a step's peak memory at 2.5x that of the plain full-logits path
(benchmarks/: the memory pair). Smaller tiles there keep TRL's kernel, its exactness and every output it computes
(entropy, top-1, WPO's log sum p^2, their gradients) and bring the peak to about 0.2x the full logits', as fast.

TRL reads both sizes from module globals on every call and has no setting for them; `fit_fused_head_tiles` sets them.

Off Triton TRL also scores every position, prompt and padding included, not only the labelled ones: its comment says
why (on Neuron a batch-dependent tile shape recompiles). Eager CPU code compiles nothing, so there chatalign has TRL
score only the labelled positions, as it does on Triton GPUs: the same values and gradients, and less work by the
unlabelled share (a padding-free DPO step whose prompts are 18% of its positions: 1.16x faster, benchmarks/).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# (positions, vocabulary entries) per tile where the kernel runs on plain torch ops; measured on a 2-core CPU with a
# 32k vocabulary (benchmarks/RESULTS.md): 512 x 4096 was the lowest peak without a slower step.
TORCH_OPS_TILES = (512, 4096)


def fused_head_tiles() -> tuple[int, int]:
    """The (positions, vocabulary entries) per tile TRL's fused LM head uses now."""
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    return kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE


def fit_fused_head_tiles(device, tiles: tuple[int, int] = TORCH_OPS_TILES) -> tuple[int, int]:
    """Give TRL's fused LM head `tiles` where it would fold them with torch ops (no Triton for `device`); where its
    Triton kernel runs, keep TRL's own sizes. Returns the sizes in use."""
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    device = torch.device(device)
    if kernel._use_triton(device):
        return fused_head_tiles()
    score_only_labelled_positions_on_cpu()
    positions, vocab = tiles
    if (positions, vocab) != fused_head_tiles():
        kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = positions, vocab
        logger.info("fused LM head on %s without Triton: tiles of %d positions x %d vocabulary entries",
                    device.type, positions, vocab)
    return positions, vocab


def score_only_labelled_positions_on_cpu() -> None:
    """Have TRL's fused head pass only labelled positions to its kernel on CPUs, as it does on Triton devices.

    TRL decides with the `_use_triton` name it imported into `trl.trainer.utils`, read there for that one choice
    (`compact = _use_triton(device)`); the kernel's own choice of fold (Triton or torch ops) reads its module's name
    and is left alone."""
    import torch
    import trl.trainer.utils as trl_utils

    decide = trl_utils._use_triton
    if getattr(decide, "chatalign_compact_on_cpu", False):
        return

    def compact_on_triton_or_cpu(device: torch.device) -> bool:
        return decide(device) or torch.device(device).type == "cpu"

    compact_on_triton_or_cpu.chatalign_compact_on_cpu = True
    trl_utils._use_triton = compact_on_triton_or_cpu
