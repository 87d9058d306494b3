"""Generation from a model path. This module holds the in-process backend, the CPU fallback: batched
`transformers.generate` with left padding and length-sorted batches, prompts rendered with the model's own chat
template so training, generation and evaluation use one template.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0


def _truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def generate_local(model, tokenizer, conversations: list[list[dict]], params: SamplingParams,
                   batch_size: int = 8, progress: bool = True) -> list[list[str]]:
    """`params.n` completions for each conversation (a list of messages ending with a user turn), in input order.

    Batches are formed from prompts sorted by length, so little compute goes to padding; left padding keeps every
    prompt's last token next to its first generated token.
    """
    import torch
    from tqdm.auto import tqdm

    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    # The chat template already writes any bos token; don't let the tokenizer add a second one.
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[str]] = [[] for _ in conversations]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    do_sample = params.temperature > 0
    model.eval()
    bar = tqdm(total=len(order), desc="generate", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = encoded[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        if do_sample:
            # One seed per batch start: reruns of the same command give the same samples.
            torch.manual_seed(params.seed + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=params.max_tokens,
                do_sample=do_sample,
                temperature=params.temperature if do_sample else None,
                top_p=params.top_p if do_sample else None,
                num_return_sequences=params.n,
                pad_token_id=pad_id,
            )
        new_tokens = out[:, width:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, i in enumerate(batch):
            results[i] = [_truncate_at_stop(t, params.stop).strip() for t in texts[row * params.n:(row + 1) * params.n]]
        bar.update(len(batch))
    bar.close()
    return results
