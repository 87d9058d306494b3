"""The chunked LM-head log-probs equal the full-logits path (values and gradients), and ignore masked positions."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatalign.train.chunked_logps import causal_lm_token_logps, chunked_token_logps


def full_logps(hidden, weight, labels):
    logp = torch.log_softmax(hidden @ weight.T, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels != -100, picked, 0.0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_values_and_gradients_equal_the_full_logits_path(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :3] = -100  # prompt positions: not scored
    upstream = torch.randn(2, 9, dtype=torch.float64)
    expected = full_logps(hidden, weight, labels)
    (expected * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = chunked_token_logps(hidden, weight, labels, chunk=chunk)
    (got * upstream).sum().backward()
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert torch.allclose(hidden.grad, grads[0], atol=1e-5) and torch.allclose(weight.grad, grads[1], atol=1e-5)
    assert (got[0, :3] == 0).all() and hidden.grad[0, :3].abs().max() == 0


def test_causal_lm_log_probs_and_a_loss_gradient_equal_the_full_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(5, model.config.vocab_size, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    logits = model(input_ids=ids).logits[:, :-1]
    expected = full_logps_from_logits(logits, labels[:, 1:])
    expected.sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = causal_lm_token_logps(model, ids, labels, chunk=5)
    got.sum().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    for p, g in zip(model.parameters(), reference, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5)


def full_logps_from_logits(logits, labels):
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels != -100, picked, 0.0)
