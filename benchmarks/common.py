"""What every benchmark pair shares: the record, the workload (lengths, the model), the machine's matmul peak, and
the alternating timer.

Workload (every pair that trains): a Llama built from config, 4 layers, hidden 256, intermediate 1024, 4 heads,
vocab 32,000, fp32, torch threads 2; sequence lengths lognormal with median 300 tokens (mu = ln 300, sigma 0.75),
clipped to [16, 1024], seeded, token ids uniform over the vocabulary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, LAYERS, INTERMEDIATE, HEADS = 32_000, 256, 4, 1024, 4


def record(pair, a, b, ratio, goal, met, **detail):
    return {"pair": pair, "a": a, "b": b, "ratio": ratio, "goal": goal, "met": met, "detail": detail}


def lengths(n: int, seed: int, clip: int = 1024) -> list[int]:
    """`n` lengths of the workload's distribution; --quick clips them at 256 (the smallest size)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(math.log(300), 0.75, n), 16, clip)]


def clip_for(quick: bool) -> int:
    return 256 if quick else 1024


def bench_model(attn: str = "sdpa", seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def matmul_peak(seconds: float = 2.0) -> float:
    """The machine's fp32 matmul FLOP/s (1024^3 products), measured now."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - start)


def alternate(paths: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each path, run in turn `repeats` times after one warm-up each."""
    times = {name: [] for name in paths}
    for fn in paths.values():
        fn()
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def varlen_available() -> bool:
    try:
        import chatalign.train.varlen  # noqa: F401  (registers the attention implementation)
    except ImportError:
        return False
    return True
