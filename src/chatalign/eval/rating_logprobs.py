"""Logprob scoring (``--judge_scoring=logprobs``, beyond the official tools): a 1-10 rating as the judge's
probability-weighted rating, so that a verdict is never unparseable. This is what makes a small local judge usable: its
"[[7]]" is often missing or malformed, but its next-token distribution after "[[" still says what it thinks.

Two ways to read the distribution:

* In process (a local checkpoint judge where no vLLM/SGLang serves it; ``transformers serve`` returns no logprobs):
  the judge writes its explanation greedily; the text up to its first "[[" (or, when it wrote none, its text followed
  by "\\n\\nRating: [[") is the prefix, and P(r) is the judge's probability of continuing with "r]]" for r = 1..10,
  every continuation scored in full, so "10" is exact whatever the tokenizer does with digits.
* Over HTTP (vLLM, SGLang, OpenAI): ``top_logprobs`` at the token after the first "[[". Ratings are read from single
  tokens: where a tokenizer splits "10" into "1", "0", the mass of "1" includes that of "10" (Llama-3 and OpenAI
  tokenizers keep "10" whole). Where the judge wrote no "[[", one follow-up request asks for the rating alone.

Probabilities are renormalised over the ten ratings; where no rating token has any probability the verdict is None
(reported as missing, as FastChat's -1 would be), never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RATINGS = tuple(range(1, 11))
RATING_CUE = "\n\nRating: [["
FOLLOW_UP = "Now give only your rating, strictly in the format \"[[rating]]\"."


def expected_rating(probs: dict[int, float] | dict[str, float] | None) -> float | None:
    """Sum of r * P(r) over the ratings, P renormalised; None without any probability mass."""
    if not probs:
        return None
    mass = {int(r): float(p) for r, p in probs.items() if int(r) in RATINGS and p > 0}
    total = sum(mass.values())
    return None if total <= 0 else sum(r * p for r, p in mass.items()) / total


def normalised(mass: dict[int, float]) -> dict[str, float] | None:
    total = sum(mass.values())
    return None if total <= 0 else {str(r): mass[r] / total for r in sorted(mass)}


def probs_from_top_logprobs(text: str, tokens: Sequence[tuple[str, dict[str, float]]]) -> dict[str, float] | None:
    """The rating distribution at the first "[[" of `text`, from the server's per-token (token, {alternative:
    logprob}) list; None where `text` has no "[[" or no alternative there is a rating."""
    cue = text.find("[[")
    if cue < 0:
        return None
    target, start = cue + 2, 0
    for token, alternatives in tokens:
        end = start + len(token)
        if end > target:  # this token holds the rating's first character, after `lead` characters of the cue
            lead = target - start
            mass: dict[int, float] = {}
            for alternative, logprob in alternatives.items():
                if lead and not alternative.startswith(token[:lead]):
                    continue
                digits = alternative[lead:].strip().rstrip("]").strip()
                if digits.isdigit() and int(digits) in RATINGS:
                    mass[int(digits)] = mass.get(int(digits), 0.0) + math.exp(logprob)
            return normalised(mass)
        start = end
    return None


class InProcessRater:
    """A local checkpoint judge run with transformers: greedy explanations, then the exact rating distribution."""

    def __init__(self, model_path: str, chat_template: str | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM

        from chatalign.data.tokenizers import load_tokenizer

        self.tokenizer = load_tokenizer(model_path, chat_template=chat_template, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        if torch.cuda.is_available():
            self.model = self.model.to("cuda")
        self.model.eval()
        self.batch_size = max(int(batch_size), 1)
        self.served_model = model_path

    def rate(self, conversations: list[list[dict]], max_tokens: int) -> list[tuple[str, dict[str, float] | None]]:
        """(explanation, {rating: probability}) per conversation."""
        from chatalign.generation.local import encode_prompts, generate_local
        from chatalign.generation.params import SamplingParams

        texts = [c[0] for c in generate_local(self.model, self.tokenizer, conversations,
                                              SamplingParams(temperature=0.0, max_tokens=max_tokens),
                                              batch_size=self.batch_size, progress=False)]
        prompts = encode_prompts(self.tokenizer, conversations)
        out = []
        for ids, text in zip(prompts, texts, strict=True):
            cue = text.find("[[")
            prefix = text[:cue + 2] if cue >= 0 else text.rstrip() + RATING_CUE
            out.append((text, self._continuation_probs(ids, prefix)))
        return out

    def choice_logprobs(self, conversations: list[list[dict]], choices: list[str]) -> list[dict[str, float]]:
        """log P(choice | the judge's prompt) of every choice, as the first words of its answer (AlpacaEval's "m" or
        "M"), per conversation: exact, whatever the tokenizer does with them."""
        from chatalign.generation.local import encode_prompts

        return [dict(zip(choices, self._continuation_logprobs(ids, "", choices), strict=True))
                for ids in encode_prompts(self.tokenizer, conversations)]

    def _continuation_probs(self, prompt_ids: list[int], prefix: str) -> dict[str, float] | None:
        """P("r]]" | prompt, prefix) for every rating r, renormalised."""
        logprobs = self._continuation_logprobs(prompt_ids, prefix, [f"{r}]]" for r in RATINGS])
        return normalised({r: math.exp(lp) for r, lp in zip(RATINGS, logprobs, strict=True)})

    def _continuation_logprobs(self, prompt_ids: list[int], prefix: str, texts: list[str]) -> list[float]:
        """log P(text | prompt, prefix) for every text: the long prompt is run once, its cache shared by the texts."""
        import torch

        base = prompt_ids + self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        endings = [self._ending_ids(prefix, text) for text in texts]
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([base], device=device), use_cache=True)
            first = out.logits[0, -1].float().log_softmax(-1).cpu()
            scores = [first[ending[0]].item() for ending in endings]
            width = max(len(ending) for ending in endings) - 1
            if width == 0:
                return scores
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(endings))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            # right padding: a text's own tokens never see the padding after them
            feed = torch.tensor([e[:-1] + [pad] * (width - len(e) + 1) for e in endings], device=device)
            mask = torch.ones((len(endings), len(base) + width), dtype=torch.long, device=device)
            rest = self.model(input_ids=feed, past_key_values=cache, attention_mask=mask).logits.float()
            rest = rest.log_softmax(-1).cpu()
        for row, ending in enumerate(endings):
            scores[row] += sum(rest[row, j - 1, ending[j]].item() for j in range(1, len(ending)))
        return scores

    def _ending_ids(self, prefix: str, ending: str) -> list[int]:
        """The tokens `ending` adds after `prefix` (tokenised together, so merges across the seam are the judge's)."""
        whole = self.tokenizer(prefix + ending, add_special_tokens=False)["input_ids"]
        alone = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        if whole[:len(alone)] == alone:
            return whole[len(alone):]
        return self.tokenizer(ending, add_special_tokens=False)["input_ids"]
