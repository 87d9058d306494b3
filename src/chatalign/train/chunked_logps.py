"""Per-token log-probabilities of the labels through the LM head, in chunks of positions, without the full logits.

TRL 1.16's fused LM head (trl.trainer.utils.add_fused_lm_head) tiles the forward but lets autograd keep every tile's
logits for the backward pass, so a training step's peak memory still holds [tokens x vocab] floats (measured in
benchmarks/: it peaks above the plain logits path on CPU). Liger's fused linear cross-entropy fixes that on GPUs but
is not installed everywhere; this is the plain PyTorch fallback: the forward keeps only each position's logsumexp,
the backward recomputes one chunk's logits at a time, so peak memory is O(chunk x vocab) instead of O(tokens x vocab).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[label] per position (hidden [N, H], weight [V, H], labels [N] with -100 for
    positions not scored: their log-prob is 0 and they get no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int = DEFAULT_CHUNK):
        out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(out)
        valid = labels != -100
        safe = labels.clamp(min=0)
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            logits = (hidden[start:end] @ weight.T).float()
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[start:end, None]).squeeze(1)
            out[start:end] = torch.where(valid[start:end], picked - lse[start:end], 0.0)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        valid = labels != -100
        safe = labels.clamp(min=0)
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = min(start + ctx.chunk, hidden.shape[0])
            g = torch.where(valid[start:end], grad_out[start:end].float(), 0.0)
            logits = (hidden[start:end] @ weight.T).float()
            # d logp(label) / d logits = onehot(label) - softmax(logits)
            dlogits = -torch.exp(logits - lse[start:end, None]) * g[:, None]
            dlogits.scatter_add_(1, safe[start:end, None], g[:, None])
            dlogits = dlogits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = dlogits @ weight
            if grad_weight is not None:
                grad_weight += (dlogits.T @ hidden[start:end]).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Per-position log-probs of `labels` ([..., H] hidden states, [...] labels, -100 = not scored -> 0)."""
    shape = labels.shape
    flat = ChunkedTokenLogps.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), chunk)
    return flat.reshape(shape)


def causal_lm_token_logps(model, input_ids, labels, chunk: int = DEFAULT_CHUNK, **model_kwargs) -> torch.Tensor:
    """log p(labels[t + 1] | input_ids[: t + 1]) for a causal LM, [batch, seq - 1], through its backbone and the
    chunked head (a plain LM head without bias, scaling or softcapping: Llama, Mistral, Qwen, SmolLM ...)."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("chunked log-probs: this LM head has a bias; use the full-logits path")
    hidden = model.get_decoder()(input_ids=input_ids, **model_kwargs).last_hidden_state
    return chunked_token_logps(hidden[:, :-1], head.weight, labels[:, 1:], chunk)
