"""chatalign.eval.rating_logprobs: the probability-weighted rating, read from an HTTP judge's top logprobs and computed
exactly in process (checked against a plain forward pass of the whole text)."""

from __future__ import annotations

import math

import pytest

from chatalign.eval.rating_logprobs import (
    RATING_CUE,
    InProcessRater,
    expected_rating,
    probs_from_top_logprobs,
)


def test_expected_rating_renormalises_over_the_ten_ratings():
    assert expected_rating({"7": 0.25, "9": 0.25}) == pytest.approx(8.0)
    assert expected_rating({"10": 0.5, "1": 0.5, "11": 0.9}) == pytest.approx(5.5)  # 11 is no rating
    assert expected_rating({}) is None and expected_rating(None) is None and expected_rating({"3": 0.0}) is None


def test_top_logprobs_at_the_token_after_the_first_cue():
    tokens = [("Good. ", {"Good. ": 0.0}), ("[[", {"[[": 0.0}), ("8", {"8": math.log(0.6), "7": math.log(0.3),
                                                                      "ten": math.log(0.1)}), ("]]", {"]]": 0.0})]
    assert probs_from_top_logprobs("Good. [[8]]", tokens) == pytest.approx({"7": 1 / 3, "8": 2 / 3})
    merged = [("OK ", {}), ("[[10", {"[[10": math.log(0.5), "[[9": math.log(0.5), "((9": 0.0}), ("]]", {})]
    assert probs_from_top_logprobs("OK [[10]]", merged) == pytest.approx({"9": 0.5, "10": 0.5})
    later = [("[[", {}), ("x", {"x": 0.0}), ("]] [[", {}), ("3", {"3": 0.0})]  # only the first cue counts
    assert probs_from_top_logprobs("[[x]] [[3", later) is None
    assert probs_from_top_logprobs("no rating", [("no rating", {"no rating": 0.0})]) is None


def sequence_logprob(model, ids: list[int], start: int) -> float:
    """log P(ids[start:] | ids[:start]) by one plain forward pass."""
    import torch

    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logprobs[pos - 1, ids[pos]].item() for pos in range(start, len(ids)))


def test_in_process_rating_is_the_exact_distribution_over_the_ten_continuations(tiny_model_dir):
    rater = InProcessRater(str(tiny_model_dir), batch_size=2)
    conversations = [[{"role": "user", "content": f"Rate this answer: {text}"}] for text in ("Paris.", "A dog.")]
    rated = rater.rate(conversations, max_tokens=6)
    from chatalign.generation.local import encode_prompts

    for conversation, (text, probs) in zip(conversations, rated, strict=True):
        assert "[[" not in text  # the random model writes no rating: the cue is added after its text
        assert list(probs) == [str(r) for r in range(1, 11)] and sum(probs.values()) == pytest.approx(1.0)
        prompt = encode_prompts(rater.tokenizer, [conversation])[0]
        prefix = text.rstrip() + RATING_CUE
        direct = {}
        for rating in range(1, 11):
            base = prompt + rater.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            ids = base + rater._ending_ids(prefix, f"{rating}]]")
            direct[rating] = math.exp(sequence_logprob(rater.model, ids, len(base)))
        total = sum(direct.values())
        assert probs == pytest.approx({str(r): p / total for r, p in direct.items()}, rel=1e-4)
        assert 1.0 <= expected_rating(probs) <= 10.0
