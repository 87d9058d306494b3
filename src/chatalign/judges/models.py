"""The judges: reward models, pair classifiers, LLMs (in process or over HTTP), and plain Python functions."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chatalign.data.tokenizers import load_tokenizer
from chatalign.generation.local import generate_local
from chatalign.generation.params import SamplingParams
from chatalign.judges.cache import Judgment
from chatalign.judges.prompts import (
    PAIR_SYSTEM_PROMPT,
    PAIR_USER_TEMPLATE,
    SINGLE_SYSTEM_PROMPT,
    SINGLE_USER_TEMPLATE,
    VERDICT_VALUES,
    pair_judge_messages,
    parse_rating,
    parse_verdict,
    render_conversation,
    single_judge_messages,
)
from chatalign.store import canonical_messages


class FunctionJudge:
    """A judge from plain functions: score(prompt, response) -> float | None and/or compare(prompt, a, b) -> P(a
    better) | None. For tests and for custom judges written in Python; `calls` counts judgments made."""

    def __init__(self, name: str, score: Callable | None = None, compare: Callable | None = None, chunk_size: int = 8):
        if score is None and compare is None:
            raise ValueError("FunctionJudge needs a score and/or a compare function")
        self.name = name
        self._score, self._compare = score, compare
        self.pointwise, self.pairwise = score is not None, compare is not None
        self.chunk_size = chunk_size
        self.calls = 0

    def score_batch(self, requests):
        self.calls += len(requests)
        return [Judgment(as_number(self._score(prompt, response))) for prompt, response in requests]

    def compare_batch(self, requests):
        self.calls += len(requests)
        return [Judgment(as_number(self._compare(prompt, a, b))) for prompt, a, b in requests]


def as_number(value) -> float | None:
    return None if value is None else float(value)


class _SequenceClassifier:
    """A lazily loaded AutoModelForSequenceClassification reading texts in batches; truncated from the left so the end
    of a long response, which the last-token head reads, is kept."""

    def __init__(self, path: str, batch_size: int, max_length: int):
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self.model = self.tokenizer = None
        self.truncated = 0

    def load(self):
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = load_tokenizer(self.path, padding_side="right")
        self.tokenizer.truncation_side = "left"
        self.model, info = AutoModelForSequenceClassification.from_pretrained(self.path, output_loading_info=True)
        if info["missing_keys"]:  # e.g. a causal LM's folder: its score head would be random numbers
            raise ValueError(f"judge model '{self.path}': {sorted(info['missing_keys'])[:3]} did not load: it has no "
                             "trained score head, so its scores would be random; give a reward model checkpoint")
        if self.model.config.pad_token_id is None:  # batches of more than one row need it to find each last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels not in (1, 2):
            raise ValueError(f"judge model '{self.path}' has num_labels={self.model.config.num_labels}; a reward "
                             "model needs 1 (a score) or 2 (label 1 = better)")
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def logits(self, texts: list[str], add_special_tokens: bool) -> list[list[float]]:
        import torch

        self.load()
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=add_special_tokens)["input_ids"]
            self.truncated += sum(len(row) > self.max_length for row in ids)
            encoded = self.tokenizer.pad({"input_ids": [row[-self.max_length:] for row in ids]}, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.model.device) for k, v in encoded.items()}).logits
            out.extend(logits.float().cpu().tolist())
        return out


class RewardModelJudge:
    """Pointwise: the checkpoint's chat template renders prompt + response (plain 'Role: text' lines without one);
    score = logit (num_labels 1) or logit[1] - logit[0] (num_labels 2)."""

    pointwise, pairwise = True, False

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 2048):
        self.name = f"reward_model:{Path(path).expanduser().resolve()}"
        self.classifier = _SequenceClassifier(str(Path(path).expanduser()), batch_size, max_length)
        self.chunk_size = batch_size * 4

    def text(self, prompt: Sequence[dict], response: str) -> tuple[str, bool]:
        self.classifier.load()
        messages = [*canonical_messages(prompt), {"role": "assistant", "content": response}]
        if self.classifier.tokenizer.chat_template:
            return self.classifier.tokenizer.apply_chat_template(messages, tokenize=False), False
        return render_conversation(messages), True

    def score_batch(self, requests):
        rendered = [self.text(prompt, response) for prompt, response in requests]
        special = rendered[0][1] if rendered else False
        logits = self.classifier.logits([text for text, _ in rendered], add_special_tokens=special)
        return [Judgment(row[0] if len(row) == 1 else row[1] - row[0]) for row in logits]


class PairRMJudge:
    """Pairwise: llm-blender's PairRM (chatalign.judges.pairrm) compares two candidates side by side;
    P(candidate 1 is better) = sigmoid(its logit). The source it reads is a lone user message's text, else the
    conversation as the LLM judge reads it."""

    pointwise, pairwise = False, True

    def __init__(self, path: str, batch_size: int = 8, max_length: int | None = None):
        self.name = f"pairrm:{Path(path).expanduser().resolve()}"
        self.path, self.batch_size = str(Path(path).expanduser()), batch_size
        self.model = self.tokenizer = None
        self.chunk_size = batch_size * 4

    def compare_batch(self, requests):
        from chatalign.judges.pairrm import load_pairrm, pairrm_logits

        if self.model is None:
            self.model, self.tokenizer = load_pairrm(self.path)
        sources = [p[0]["content"] if len(p) == 1 and p[0]["role"] == "user" else render_conversation(p)
                   for p, _, _ in requests]
        logits = pairrm_logits(self.model, self.tokenizer, sources, [a for _, a, _ in requests],
                               [b for _, _, b in requests], self.batch_size)
        return [Judgment(_sigmoid(logit)) for logit in logits]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class LLMJudge:
    """An LLM asked with SINGLE_* (a 1-10 rating) or PAIR_* prompts (A / B / C) through `complete_many(list of
    message lists) -> list of answers (None for a failed request)`."""

    pointwise, pairwise = True, True

    def __init__(self, complete_many: Callable[[list[list[dict]]], list[str | None]], target: str,
                 max_tokens: int = 1024, chunk_size: int = 8):
        prompt_hash = hashlib.sha256("\n".join([SINGLE_SYSTEM_PROMPT, SINGLE_USER_TEMPLATE, PAIR_SYSTEM_PROMPT,
                                                PAIR_USER_TEMPLATE]).encode()).hexdigest()[:10]
        self.name = f"llm:{target}|prompts:{prompt_hash}|max_tokens:{max_tokens}"
        self.complete_many = complete_many
        self.chunk_size = chunk_size
        self.calls = 0

    @classmethod
    def from_callable(cls, complete: Callable[[list[dict]], str], target: str = "callable", **kwargs) -> LLMJudge:
        """An LLM judge over a plain `complete(messages) -> str`, called once per request."""
        return cls(lambda conversations: [complete(c) for c in conversations], target, **kwargs)

    def _ask(self, conversations):
        self.calls += len(conversations)
        answers = list(self.complete_many(conversations))
        if len(answers) != len(conversations):
            raise RuntimeError(f"LLM judge {self.name}: {len(answers)} answers for {len(conversations)} requests")
        return answers

    def score_batch(self, requests):
        answers = self._ask([single_judge_messages(prompt, response) for prompt, response in requests])
        return [None if a is None else Judgment(parse_rating(a), a) for a in answers]

    def compare_batch(self, requests):
        answers = self._ask([pair_judge_messages(prompt, a, b) for prompt, a, b in requests])
        return [None if ans is None else Judgment(VERDICT_VALUES.get(parse_verdict(ans)), ans) for ans in answers]


def local_completer(model_path: str, max_tokens: int, batch_size: int = 8):
    """complete_many for a checkpoint generated from in process (greedy), loaded on first use."""
    loaded: dict[str, Any] = {}

    def complete_many(conversations):
        if not loaded:
            from transformers import AutoModelForCausalLM

            loaded["tokenizer"] = load_tokenizer(model_path, padding_side="left")
            loaded["model"] = AutoModelForCausalLM.from_pretrained(model_path)
        outputs = generate_local(loaded["model"], loaded["tokenizer"], conversations,
                                 SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens), batch_size=batch_size,
                                 progress=False)
        return [o[0] if o else None for o in outputs]

    return complete_many


def client_completer(client, max_tokens: int):
    """complete_many over the generation layer's ChatClient (parallel requests, retries, load balancing)."""
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)

    def complete_many(conversations):
        answers: list[str | None] = [None] * len(conversations)

        def on_result(key, completions):
            answers[key] = completions[0] if completions else None

        client.chat_many([(i, c, params) for i, c in enumerate(conversations)], on_result)
        return answers

    return complete_many
