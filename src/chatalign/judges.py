"""Judges that score or compare chat responses, a cache so no judgment is paid for twice, and the PairRM-style
tournament that turns pairwise comparisons into scores.

Judge specs (`--judge` of gen_preference_pairs.py, `--judge_model` of judge_dataset.py):

    reward_model:<path>   any AutoModelForSequenceClassification checkpoint; score = the logit (num_labels 1), or
                          logit[1] - logit[0] (num_labels 2). Pointwise. Alias: rm:<path>
    pairrm:<path>         a sequence-classification model reading the pair text (PAIR_TEXT_TEMPLATE, PairRM's
                          <|source|>/<|candidate1|>/<|candidate2|> layout) and giving P(candidate 1 is better):
                          sigmoid(logit) (num_labels 1) or softmax(logits)[1] (num_labels 2). Pairwise.
    llm:<target>          an LLM asked with the prompts below: a 1-10 rating per response ("Rating: [[7]]"), or a
                          verdict per pair ("[[A]]" / "[[B]]" / "[[C]]" for a tie). Pointwise and pairwise. target:
                            a local checkpoint folder     -> generated in process (greedy, transformers)
                            http(s)://host:port/v1        -> an OpenAI-compatible server, the model it lists first
                            <model>@http(s)://host/v1     -> that server, that model
                            <model>                       -> judge_base_url (default the OpenAI API) with that model

Rules every caller relies on:
  - A judgment is cached under sha256(judge name, kind, prompt, response(s)); the judge name carries everything that
    changes a verdict (kind, checkpoint path or model@url, for LLM judges a hash of the prompt text and max tokens).
    Identical texts therefore always get identical judgments, within a run and across runs.
  - An LLM answer without a parseable verdict is a judgment with value None ("unparseable"); it is cached (asking
    the same greedy judge again gives the same answer) and counted by callers. A request that failed outright
    (the client returned nothing) is not cached, so a rerun retries it.
  - Tournament (pairwise judges): every pair of samples is compared, by default in both orders; the pair's
    probability is the mean of P(i over j) and 1 - P(j over i) over the orders that parsed. > 0.5: i wins 1 point,
    < 0.5: j does, exactly 0.5: half a point each; a pair with no parsed order gives no points and counts as
    unparseable. A sample's score is its points (0 .. n-1). Identical texts are a tie without a judge call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JUDGE_KINDS = ("reward_model", "pairrm", "llm")
_KIND_ALIASES = {"rm": "reward_model", "reward_model": "reward_model", "pairrm": "pairrm", "pair_rm": "pairrm",
                 "llm": "llm"}
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
SCORE, COMPARE = "score", "compare"

# --------------------------------------------------------------------------------------------------------------------
# LLM judge prompts. Changing either text changes every LLM judge's name, so cached verdicts of the old prompt are
# never reused for the new one.

SINGLE_SYSTEM_PROMPT = (
    "You are a fair and careful judge of AI assistant replies. Read the conversation and the assistant's final reply "
    "below and rate how well that reply serves the user: is it helpful, correct, relevant, clear, and as detailed as "
    "the request needs? Do not let the reply's length sway you. First explain your assessment in two or three "
    "sentences. Then give your rating as an integer from 1 (useless or harmful) to 10 (excellent) on the last line, "
    'in exactly this form: "Rating: [[7]]".'
)
SINGLE_USER_TEMPLATE = "[Conversation]\n{conversation}\n\n[Reply to rate]\n{response}\n[End of reply]"

PAIR_SYSTEM_PROMPT = (
    "You are a fair and careful judge of AI assistant replies. Read the conversation and the two candidate replies "
    "below, A and B, and decide which one serves the user better: more helpful, correct, relevant and clear. The order "
    "in which the replies are shown and their length must not influence you. First compare them in two or three "
    'sentences. Then give your verdict on the last line in exactly this form: "[[A]]" if A is better, "[[B]]" if B '
    'is better, "[[C]]" if they are equally good.'
)
PAIR_USER_TEMPLATE = (
    "[Conversation]\n{conversation}\n\n[Reply A]\n{a}\n[End of reply A]\n\n[Reply B]\n{b}\n[End of reply B]"
)
RATING_RANGE = (1.0, 10.0)
# The input layout of PairRM (llm-blender), which a fine-tuned pair classifier is expected to have been trained on.
PAIR_TEXT_TEMPLATE = "<|source|> {conversation} <|candidate1|> {a} <|candidate2|> {b}"

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
_RATING_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_WORD = re.compile(r"Rating\s*:\s*\[?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
VERDICT_VALUES = {"A": 1.0, "B": 0.0, "C": 0.5}


def render_conversation(messages: Sequence[dict]) -> str:
    """'User: ...\\n\\nAssistant: ...' -- the conversation as the judge reads it."""
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def single_judge_messages(prompt: Sequence[dict], response: str) -> list[dict]:
    user = SINGLE_USER_TEMPLATE.format(conversation=render_conversation(prompt), response=response)
    return [{"role": "system", "content": SINGLE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def pair_judge_messages(prompt: Sequence[dict], a: str, b: str) -> list[dict]:
    user = PAIR_USER_TEMPLATE.format(conversation=render_conversation(prompt), a=a, b=b)
    return [{"role": "system", "content": PAIR_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_rating(text: str | None) -> float | None:
    """The rating in an LLM judge's answer, or None (unparseable).

    The last "[[n]]" wins (a judge may quote the format before giving its verdict); without one, the last
    "Rating: n" / "Rating: [n]". A number outside 1..10 is unparseable, not clipped.
    """
    if not text:
        return None
    matches = _RATING_BRACKETS.findall(text) or _RATING_WORD.findall(text)
    if not matches:
        return None
    value = float(matches[-1])
    return value if RATING_RANGE[0] <= value <= RATING_RANGE[1] else None


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'C' (tie) from the last "[[X]]" of a pairwise judge's answer, or None (unparseable)."""
    if not text:
        return None
    matches = _VERDICT.findall(text)
    return matches[-1].upper() if matches else None


# --------------------------------------------------------------------------------------------------------------------
# Judgments and the cache


@dataclass(frozen=True)
class Judgment:
    """A score (pointwise) or P(first response is better) (pairwise); value None = no parseable verdict."""

    value: float | None
    raw: str | None = None


def _canonical_prompt(prompt: Sequence[dict]) -> list[dict]:
    # Arrow gives every message the union of keys (absent ones None); only role and content identify a prompt.
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def judgment_key(judge_name: str, kind: str, prompt: Sequence[dict], *responses: str) -> str:
    text = json.dumps([judge_name, kind, _canonical_prompt(prompt), *responses], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Judgments keyed by judgment_key: appended to `path` as they are made, also read from `read_also` files (other
    processes' caches, earlier runs'), so a judgment already paid for anywhere under the work folder is reused.
    `paid` counts the judgments requested from a judge through this cache (cache misses)."""

    def __init__(self, path: str | Path, read_also: Sequence[str | Path] = ()):
        from chatalign.generation import ResumableJsonl

        self.store = ResumableJsonl(path, key="key")
        self._others: dict[str, dict] = {}
        for other in read_also:
            if Path(other) != Path(path) and Path(other).is_file():
                for row in ResumableJsonl(other, key="key").rows():
                    self._others.setdefault(row["key"], row)
        self.paid = 0

    def get(self, key: str) -> Judgment | None:
        row = self.store.get(key) or self._others.get(key)
        return None if row is None else Judgment(row["value"], row.get("raw"))

    def add(self, key: str, judge: str, kind: str, judgment: Judgment) -> None:
        self.store.add({"key": key, "judge": judge, "kind": kind, "value": judgment.value, "raw": judgment.raw})

    def __len__(self) -> int:
        return len(self.store) + len(self._others)


def _cached(judge, cache: JudgmentCache | None, kind: str, requests: list[tuple]) -> list[Judgment]:
    """Judgments for `requests` ((prompt, response) or (prompt, a, b)), asking the judge only for uncached ones, in
    chunks of judge.chunk_size so an interrupted run loses at most one chunk of paid work."""
    keys = [judgment_key(judge.name, kind, r[0], *r[1:]) for r in requests]
    known: dict[str, Judgment] = {}
    missing: dict[str, tuple] = {}
    for key, request in zip(keys, requests, strict=True):
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            known[key] = hit
        elif key not in known:
            missing.setdefault(key, request)
    todo = list(missing.items())
    method = judge.score_batch if kind == SCORE else judge.compare_batch
    step = max(int(getattr(judge, "chunk_size", 8)), 1)
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        results = method([request for _, request in chunk])
        if cache is not None:
            cache.paid += len(chunk)
        for (key, _), judgment in zip(chunk, results, strict=True):
            if judgment is None:  # the request itself failed: not cached, retried by the next run
                judgment = Judgment(None, None)
            elif cache is not None:
                cache.add(key, judge.name, kind, judgment)
            known[key] = judgment
    return [known[key] for key in keys]


def cached_scores(judge, cache: JudgmentCache | None, requests: list[tuple[Sequence[dict], str]]) -> list[Judgment]:
    """Pointwise judgments of (prompt, response) requests through the cache."""
    return _cached(judge, cache, SCORE, requests)


def cached_comparisons(judge, cache: JudgmentCache | None,
                       requests: list[tuple[Sequence[dict], str, str]]) -> list[Judgment]:
    """P(a better than b) of (prompt, a, b) requests through the cache."""
    return _cached(judge, cache, COMPARE, requests)


# --------------------------------------------------------------------------------------------------------------------
# The tournament


def tournament_pairs(texts: Sequence[str], both_orders: bool = True) -> list[tuple[str, str]]:
    """The ordered (a, b) comparisons a tournament over `texts` needs: distinct texts only, each pair once per order."""
    unique = list(dict.fromkeys(texts))
    pairs = []
    for i, a in enumerate(unique):
        for b in unique[i + 1:]:
            pairs.append((a, b))
            if both_orders:
                pairs.append((b, a))
    return pairs


def tournament_wins(texts: Sequence[str], prob: Callable[[str, str], float | None],
                    both_orders: bool = True) -> tuple[list[float], int]:
    """(points per sample, unjudged pairs): every pair of samples compared by prob(a, b) = P(a better than b).

    See the module docstring for the rule; `prob` is only called for distinct texts and pairs tournament_pairs lists.
    """
    n = len(texts)
    points = [0.0] * n
    unjudged = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = texts[i], texts[j]
            if a == b:
                p = 0.5
            else:
                # Pairs are listed once per unordered pair of distinct texts, in the order of first appearance.
                first, second = (a, b) if texts.index(a) < texts.index(b) else (b, a)
                estimates = []
                forward = prob(first, second)
                if forward is not None:
                    estimates.append(forward)
                if both_orders:
                    backward = prob(second, first)
                    if backward is not None:
                        estimates.append(1.0 - backward)
                if not estimates:
                    unjudged += 1
                    continue
                p_first = sum(estimates) / len(estimates)
                p = p_first if first == a else 1.0 - p_first
            if p > 0.5:
                points[i] += 1.0
            elif p < 0.5:
                points[j] += 1.0
            else:
                points[i] += 0.5
                points[j] += 0.5
    return points, unjudged


def rank_by_wins(prompt: Sequence[dict], responses: Sequence[str],
                 compare: Callable[[Sequence[dict], str, str], float | None],
                 both_orders: bool = True) -> tuple[list[float], int]:
    """The tournament over a plain `compare(prompt, a, b) -> P(a better)` function (no cache, one call per pair)."""
    table = {(a, b): compare(prompt, a, b) for a, b in tournament_pairs(responses, both_orders)}
    return tournament_wins(responses, lambda a, b: table[(a, b)], both_orders)


# --------------------------------------------------------------------------------------------------------------------
# Judges


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
        return [Judgment(_number(self._score(prompt, response))) for prompt, response in requests]

    def compare_batch(self, requests):
        self.calls += len(requests)
        return [Judgment(_number(self._compare(prompt, a, b))) for prompt, a, b in requests]


def _number(value) -> float | None:
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

        from chatalign.model_utils import load_tokenizer

        self.tokenizer = load_tokenizer(self.path, padding_side="right")
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path)
        if self.model.config.pad_token_id is None:  # batches of more than one row need it to find each last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels not in (1, 2):
            raise ValueError(f"judge model '{self.path}' has num_labels={self.model.config.num_labels}; a reward "
                             "model or pair classifier needs 1 (a score) or 2 (label 1 = better)")
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
        messages = [*_canonical_prompt(prompt), {"role": "assistant", "content": response}]
        if self.classifier.tokenizer.chat_template:
            return self.classifier.tokenizer.apply_chat_template(messages, tokenize=False), False
        return render_conversation(messages), True

    def score_batch(self, requests):
        rendered = [self.text(prompt, response) for prompt, response in requests]
        special = rendered[0][1] if rendered else False
        logits = self.classifier.logits([text for text, _ in rendered], add_special_tokens=special)
        return [Judgment(row[0] if len(row) == 1 else row[1] - row[0]) for row in logits]


class PairClassifierJudge:
    """Pairwise: a sequence-classification model reads PAIR_TEXT_TEMPLATE and gives P(candidate 1 is better)."""

    pointwise, pairwise = False, True

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 2048):
        self.name = f"pairrm:{Path(path).expanduser().resolve()}"
        self.classifier = _SequenceClassifier(str(Path(path).expanduser()), batch_size, max_length)
        self.chunk_size = batch_size * 4

    def compare_batch(self, requests):
        texts = [PAIR_TEXT_TEMPLATE.format(conversation=render_conversation(p), a=a, b=b) for p, a, b in requests]
        logits = self.classifier.logits(texts, add_special_tokens=True)
        return [Judgment(_sigmoid(row[0]) if len(row) == 1 else _softmax_last(row)) for row in logits]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softmax_last(row: list[float]) -> float:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return exps[-1] / sum(exps)


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
        from chatalign.generation import SamplingParams, generate_local

        if not loaded:
            from transformers import AutoModelForCausalLM

            from chatalign.model_utils import load_tokenizer

            loaded["tokenizer"] = load_tokenizer(model_path, padding_side="left")
            loaded["model"] = AutoModelForCausalLM.from_pretrained(model_path)
        outputs = generate_local(loaded["model"], loaded["tokenizer"], conversations,
                                 SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens), batch_size=batch_size,
                                 progress=False)
        return [o[0] if o else None for o in outputs]

    return complete_many


def client_completer(client, max_tokens: int):
    """complete_many over the generation layer's ChatClient (parallel requests, retries, load balancing)."""
    from chatalign.generation import SamplingParams

    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)

    def complete_many(conversations):
        answers: list[str | None] = [None] * len(conversations)

        def on_result(key, completions):
            answers[key] = completions[0] if completions else None

        client.chat_many([(i, c, params) for i, c in enumerate(conversations)], on_result)
        return answers

    return complete_many


# --------------------------------------------------------------------------------------------------------------------
# Specs and loading


@dataclass
class JudgeArguments:
    """Recipe/CLI keys tuning a judge (the judge itself is `--judge` / `--judge_model`)."""

    judge_base_url: str | None = field(
        default=None, metadata={"help": f"Endpoint for `llm:<model>` judges (default {DEFAULT_OPENAI_URL})."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY",
                                   metadata={"help": "Environment variable holding the judge endpoint's key."})
    judge_parallel: int = field(default=8, metadata={"help": "LLM judge requests in flight at once."})
    judge_batch_size: int = field(default=8, metadata={"help": "Texts per forward pass of a local judge model."})
    judge_max_tokens: int = field(default=1024, metadata={"help": "Tokens an LLM judge may write per verdict."})
    judge_max_length: int = field(default=2048,
                                  metadata={"help": "Token limit of a reward model / pair classifier input (the "
                                                    "start is cut)."})
    judge_both_orders: bool = field(default=True, metadata={"help": "Pairwise judges compare every pair in both "
                                                                    "orders, cancelling position bias."})


@dataclass(frozen=True)
class JudgeSpec:
    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_judge_spec(spec: str, default_kind: str | None = None) -> JudgeSpec:
    """'kind:target' (kinds: reward_model|rm, pairrm, llm); without a known kind prefix, `default_kind` if given."""
    if not spec or not str(spec).strip():
        raise ValueError(f"judge spec is empty; expected one of {', '.join(k + ':<...>' for k in JUDGE_KINDS)}")
    prefix, sep, rest = str(spec).partition(":")
    if sep and prefix.lower() in _KIND_ALIASES and rest:
        return JudgeSpec(_KIND_ALIASES[prefix.lower()], rest)
    if default_kind is not None:
        return JudgeSpec(default_kind, str(spec))
    raise ValueError(f"judge spec '{spec}': expected reward_model:<path>, pairrm:<path> or llm:<model, url or path>")


def resolve_llm_target(target: str, base_url: str | None = None) -> tuple[str, str | None, str | None]:
    """("local", path, None) or ("http", url, model) for an llm: judge target (see the module docstring)."""
    if Path(target).expanduser().is_dir():
        return "local", str(Path(target).expanduser().resolve()), None
    if target.startswith(("http://", "https://")):
        return "http", target, None
    model, at, url = target.rpartition("@")
    if at and url.startswith(("http://", "https://")) and model:
        return "http", url, model
    return "http", base_url or DEFAULT_OPENAI_URL, target


def load_judge(spec: str | JudgeSpec, args: JudgeArguments | None = None, gen_args=None,
               default_kind: str | None = None):
    """A judge for a spec. Models are loaded on the first uncached judgment, so a fully cached rerun loads nothing."""
    args = args or JudgeArguments()
    spec = spec if isinstance(spec, JudgeSpec) else parse_judge_spec(spec, default_kind)
    if spec.kind in ("reward_model", "pairrm"):
        if not Path(spec.target).expanduser().exists():
            raise FileNotFoundError(f"judge '{spec}': no such checkpoint folder '{spec.target}'")
        cls = RewardModelJudge if spec.kind == "reward_model" else PairClassifierJudge
        return cls(spec.target, batch_size=args.judge_batch_size, max_length=args.judge_max_length)
    where, location, model = resolve_llm_target(spec.target, args.judge_base_url)
    if where == "local":
        return LLMJudge(local_completer(location, args.judge_max_tokens, args.judge_batch_size), location,
                        max_tokens=args.judge_max_tokens, chunk_size=args.judge_batch_size * 4)
    # The name (the cache identity) is the target as given; the client, and a request asking a bare URL which model
    # it serves, wait for the first uncached judgment, so a fully cached rerun needs no server.
    target = f"{model}@{location}" if model else location
    return LLMJudge(_lazy_client_completer(location, model, args, gen_args), target,
                    max_tokens=args.judge_max_tokens, chunk_size=max(args.judge_parallel, 1) * 4)


def _lazy_client_completer(url: str, model: str | None, args: JudgeArguments, gen_args=None):
    state: dict[str, Any] = {}

    def complete_many(conversations):
        if "complete" not in state:
            served = model or served_model(url, os.environ.get(args.judge_api_key_env))
            state["complete"] = client_completer(_chat_client(url, served, args, gen_args), args.judge_max_tokens)
        return state["complete"](conversations)

    return complete_many


def served_model(url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The first model an OpenAI-compatible endpoint lists at GET /models ("default" when it lists none)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        # A proxy from the environment must not swallow requests to a server on this machine.
        local = (httpx.URL(url).host or "") in ("127.0.0.1", "localhost", "::1")
        response = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=timeout, trust_env=not local)
        response.raise_for_status()
        models = [m.get("id") for m in response.json().get("data", []) if m.get("id")]
    except (httpx.HTTPError, ValueError) as err:
        raise ConnectionError(f"judge endpoint {url}: could not list its models ({err}); give the model as "
                              f"llm:<model>@{url}") from None
    return models[0] if models else "default"


def _chat_client(url: str, model: str, args: JudgeArguments, gen_args=None):
    """The generation layer's ChatClient for the judge's endpoint (its own URL, key and parallelism)."""
    import dataclasses

    from chatalign import generation

    base = gen_args if gen_args is not None else generation.GenerationArguments()
    judge_gen_args = dataclasses.replace(base, backend="openai", base_url=url, server_ports=None,
                                         served_model_name=model, api_key_env=args.judge_api_key_env,
                                         gen_parallel=args.judge_parallel)
    if not os.environ.get(args.judge_api_key_env) and url.startswith(DEFAULT_OPENAI_URL):
        logger.warning("judge endpoint %s: environment variable %s is not set", url, args.judge_api_key_env)
    return generation.client_from_args(judge_gen_args, model)


# --------------------------------------------------------------------------------------------------------------------
# Re-annotating a preference set (scripts/judge_dataset.py)
#
# single: the judge scores chosen and rejected alone; agree if score(chosen) > score(rejected), disagree if <, tie if
#         equal, unparseable if either has no score.
# all:    the judge compares the pair twice, chosen shown first (as A) and rejected shown first; with
#         p = mean(P(chosen over rejected | chosen first), 1 - P(rejected over chosen | rejected first)): agree if
#         p > 0.5, disagree if < 0.5, tie if 0.5 (a judge that always picks the first reply lands here: its position
#         bias cancels); unparseable if either order has no verdict. Rows whose two orders name different winners
#         are also counted as position-inconsistent.
# agreement rate = agree / (agree + disagree + tie): the share of parseable rows where the judge keeps the label.

AGREE, DISAGREE, TIE, UNPARSEABLE = "agree", "disagree", "tie", "unparseable"
VERDICTS = (AGREE, DISAGREE, TIE, UNPARSEABLE)
EVAL_MODES = ("single", "all")
_ORDER_NAMES = {1.0: "A", 0.0: "B", 0.5: "C"}


def pair_id(prompt: Sequence[dict], chosen: str, rejected: str) -> str:
    """A row's identity for resuming: sha256 of its prompt and both responses (16 hex digits)."""
    return judgment_key("pair", "row", prompt, chosen, rejected)[:16]


def _verdict(p: float | None) -> str:
    if p is None:
        return UNPARSEABLE
    return AGREE if p > 0.5 else DISAGREE if p < 0.5 else TIE


def annotate_pairs(rows: Sequence[dict], judge, cache: JudgmentCache | None, mode: str) -> list[dict]:
    """A verdict dict per preference row (prompt, chosen, rejected as message lists), by `mode` (see above)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    texts = [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    out = []
    if mode == "single":
        if not getattr(judge, "pointwise", False):
            raise ValueError(f"eval_mode single needs a judge that scores one response ({judge.name} compares pairs)")
        judged = cached_scores(judge, cache, [(p, t) for p, c, r in texts for t in (c, r)])
        for k in range(len(texts)):
            jc, jr = judged[2 * k], judged[2 * k + 1]
            sc, sr = jc.value, jr.value
            p_chosen = None if sc is None or sr is None else 1.0 if sc > sr else 0.0 if sc < sr else 0.5
            out.append({"verdict": _verdict(p_chosen), "new_score_chosen": sc, "new_score_rejected": sr,
                        "judge_output_chosen": jc.raw, "judge_output_rejected": jr.raw})
        return out
    if not getattr(judge, "pairwise", False):
        raise ValueError(f"eval_mode all needs a judge that compares two responses ({judge.name} scores one)")
    judged = cached_comparisons(judge, cache, [q for p, c, r in texts for q in ((p, c, r), (p, r, c))])
    for k in range(len(texts)):
        first, second = judged[2 * k], judged[2 * k + 1]
        p_chosen = None
        if first.value is not None and second.value is not None:
            p_chosen = (first.value + 1.0 - second.value) / 2
        consistent = None
        if p_chosen is not None:
            # Winner named by each order: chosen shown first -> A means chosen; rejected shown first -> B means chosen.
            consistent = _verdict(first.value) == _verdict(1.0 - second.value)
        out.append({"verdict": _verdict(p_chosen), "p_chosen": p_chosen,
                    "verdict_chosen_first": _ORDER_NAMES.get(first.value) if first.value is not None else None,
                    "verdict_rejected_first": _ORDER_NAMES.get(second.value) if second.value is not None else None,
                    "position_consistent": consistent,
                    "judge_output_chosen_first": first.raw, "judge_output_rejected_first": second.raw})
    return out


def agreement_summary(verdicts: Sequence[dict]) -> dict[str, Any]:
    counts = Counter(v["verdict"] for v in verdicts)
    parseable = counts[AGREE] + counts[DISAGREE] + counts[TIE]
    summary: dict[str, Any] = {"rows": len(verdicts), **{v: counts[v] for v in VERDICTS},
                               "agreement_rate": counts[AGREE] / parseable if parseable else None,
                               "agreement_over_all_rows": counts[AGREE] / len(verdicts) if verdicts else None}
    inconsistent = sum(1 for v in verdicts if v.get("position_consistent") is False)
    if any("position_consistent" in v for v in verdicts):
        summary["position_inconsistent"] = inconsistent
    return summary


def format_agreement_table(summary: dict[str, Any], title: str = "") -> str:
    rows = summary["rows"]
    lines = [title] if title else []
    lines.append(f"{'verdict':<14}{'rows':>7}{'share':>9}")
    for verdict in VERDICTS:
        share = f"{100 * summary[verdict] / rows:.1f}%" if rows else "-"
        lines.append(f"{verdict:<14}{summary[verdict]:>7}{share:>9}")
    lines.append(f"{'total':<14}{rows:>7}")
    parseable = rows - summary[UNPARSEABLE]
    if summary["agreement_rate"] is None:
        lines.append("agreement with the original labels: - (no parseable verdict)")
    else:
        lines.append(f"agreement with the original labels: {100 * summary['agreement_rate']:.1f}% of {parseable} "
                     f"parseable rows ({100 * summary['agreement_over_all_rows']:.1f}% of all {rows})")
    if "position_inconsistent" in summary:
        lines.append(f"position-inconsistent (the two orders named different winners): "
                     f"{summary['position_inconsistent']}")
    return "\n".join(lines)
