"""Rewards for online RL: the recipe's reward specs, and the callables TRL's GRPO and RLOO trainers call with them.

Every reward is a TRL reward function, `reward(prompts, completions, **columns) -> list[float | None]` (None: no
reward for that completion, NaN in TRL's statistics), named by `__name__` in TRL's logs (`rewards/<name>/mean`).
Three kinds:

  function      `module:function`, imported as given: a TRL reward function (verifiable tasks: gsm8k_correctness
                below reads the gold answer from the prompt rows' `reference` column)
  reward_model  an AutoModelForSequenceClassification checkpoint, read through chatalign.judges' RewardModelJudge
                with its own tokenizer and chat template (score = logit, or logit[1] - logit[0] with two labels)
  judge         a pointwise judge spec of chatalign.judges.loading (default kind llm: `llm:<model>@<url>`, a local
                checkpoint, ...): an LLM rating 1 to 10 through the judgment cache, so no judgment is paid twice
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chatalign.configs import ConfigError
from chatalign.data.adapters.math_code import answers_match

REWARD_KINDS = ("function", "reward_model", "judge")


@dataclass(frozen=True)
class RewardSpec:
    """One reward of a recipe: its kind, what it names (module:function, a checkpoint, a judge spec), its weight."""

    kind: str
    spec: str
    weight: float = 1.0
    name: str | None = None

    @property
    def display_name(self) -> str:
        """The name TRL logs the reward under (`rewards/<name>/mean`)."""
        if self.name:
            return self.name
        if self.kind == "function":
            return self.spec.rpartition(":")[2]
        if self.kind == "reward_model":
            return f"reward_model_{Path(self.spec).name}"
        return f"judge_{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.spec)[-60:]}"


def parse_reward_specs(rewards: Sequence, reward_weights: Sequence[float] | None = None) -> list[RewardSpec]:
    """The recipe's `rewards` as specs. An entry is a mapping {kind, spec, weight (default 1), name (optional)} or a
    compact string '<kind>:<spec>' ('function:chatalign.train.rewards:gsm8k_correctness', 'reward_model:<path>',
    'judge:llm:gpt-4o@https://...'). Weights come from the entries or from TRL's `reward_weights` (one per reward),
    not both. Checked here, before anything is loaded."""
    if not rewards:
        raise ConfigError("the recipe names no reward: set rewards, e.g. [function:chatalign.train.rewards:"
                          "gsm8k_correctness]")
    specs = []
    for index, entry in enumerate(rewards):
        where = f"rewards[{index}]"
        if isinstance(entry, str):
            kind, sep, spec = entry.partition(":")
            if not sep or not spec:
                raise ConfigError(f"{where} '{entry}': expected '<kind>:<spec>' with kind one of "
                                  f"{', '.join(REWARD_KINDS)}")
            item = {"kind": kind, "spec": spec}
        elif isinstance(entry, Mapping):
            item = dict(entry)
            unknown = sorted(set(item) - {"kind", "spec", "weight", "name"})
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r} (a reward has kind, spec, weight, name)")
            if not item.get("spec") or not isinstance(item["spec"], str):
                raise ConfigError(f"{where}: 'spec' must name the reward (module:function, a checkpoint or a judge)")
        else:
            raise ConfigError(f"{where}: expected a mapping or a '<kind>:<spec>' string, got {type(entry).__name__}")
        if item.get("kind") not in REWARD_KINDS:
            raise ConfigError(f"{where}: unknown reward kind {item.get('kind')!r}; one of {', '.join(REWARD_KINDS)}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{where}: weight must be a number, got {weight!r}")
        specs.append(RewardSpec(item["kind"], item["spec"], float(weight), item.get("name")))
    if reward_weights is not None:
        if any(isinstance(e, Mapping) and "weight" in e for e in rewards):
            raise ConfigError("weights are given both in rewards entries and in reward_weights: give them once")
        if len(reward_weights) != len(specs):
            raise ConfigError(f"reward_weights has {len(reward_weights)} weights for {len(specs)} rewards")
        specs = [RewardSpec(s.kind, s.spec, float(w), s.name) for s, w in zip(specs, reward_weights, strict=True)]
    names = [s.display_name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two rewards would be logged as '{duplicates[0]}': give one of them a name")
    for index, spec in enumerate(specs):
        check_reward_spec(spec, f"rewards[{index}]")
    return specs


def check_reward_spec(spec: RewardSpec, where: str) -> None:
    """What can be checked without loading a model: the function imports, the checkpoint exists, the judge parses."""
    if spec.kind == "function":
        import_reward_function(spec.spec, where)
    elif spec.kind == "reward_model":
        if not Path(spec.spec).expanduser().is_dir():
            raise ConfigError(f"{where} reward_model '{spec.spec}': no such checkpoint folder")
    else:
        from chatalign.judges.loading import parse_judge_spec

        try:
            judge = parse_judge_spec(spec.spec, default_kind="llm")
        except ValueError as err:
            raise ConfigError(f"{where} judge: {err}") from None
        if judge.kind == "pairrm":
            raise ConfigError(f"{where} judge '{spec.spec}': a pairwise judge gives no reward for one completion")
        if judge.kind == "reward_model" and not Path(judge.target).expanduser().is_dir():
            raise ConfigError(f"{where} judge '{spec.spec}': no such checkpoint folder")


def import_reward_function(spec: str, where: str = "reward") -> Callable:
    """The callable `module:function` names (a dotted attribute path after the colon is allowed)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{where} function '{spec}': expected 'module:function', e.g. "
                          "'chatalign.train.rewards:gsm8k_correctness'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where} function '{spec}': cannot import module '{module_name}' ({err})") from None
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{where} function '{spec}': module '{module_name}' has no '{attribute}'")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{where} function '{spec}': '{attribute}' is a {type(value).__name__}, not a function")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Building the reward callables


def completion_text(completion) -> str:
    """A completion's text: TRL gives conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def prompt_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class NamedReward:
    """A reward function under a fixed name (TRL logs a callable by its `__name__`)."""

    def __init__(self, name: str, function: Callable):
        self.__name__ = name
        self.function = function

    def __call__(self, prompts, completions, **kwargs):
        return self.function(prompts=prompts, completions=completions, **kwargs)


class JudgeReward:
    """A pointwise judge's score of each (prompt, completion) as the reward, through a JudgmentCache when given (an
    unparseable verdict or a failed request is None). `device` moves a reward model onto the trainer's device."""

    def __init__(self, name: str, judge, cache=None, device=None):
        self.__name__ = name
        self.judge, self.cache, self.device = judge, cache, device

    def load(self) -> None:
        classifier = getattr(self.judge, "classifier", None)
        if classifier is not None:
            classifier.load()
            if self.device is not None:
                classifier.model.to(self.device)

    def __call__(self, prompts, completions, **kwargs):
        from chatalign.judges.cache import cached_scores

        self.load()
        requests = [(prompt_messages(p), completion_text(c)) for p, c in zip(prompts, completions, strict=True)]
        return [j.value for j in cached_scores(self.judge, self.cache, requests)]


def build_rewards(specs: Sequence[RewardSpec], judge_args=None, cache_path: str | Path | None = None,
                  read_also: Sequence[str | Path] = (), device=None) -> list[Callable]:
    """The TRL reward functions of `specs`, in order (their weights go to TRL's reward_weights). Reward models are
    loaded now; LLM judges share one JudgmentCache at `cache_path` (none: every judgment is paid)."""
    from chatalign.judges.cache import JudgmentCache
    from chatalign.judges.loading import JudgeArguments, load_judge
    from chatalign.judges.models import RewardModelJudge

    judge_args = judge_args or JudgeArguments()
    cache = None
    rewards: list[Callable] = []
    for spec in specs:
        if spec.kind == "function":
            rewards.append(NamedReward(spec.display_name, import_reward_function(spec.spec)))
            continue
        if spec.kind == "reward_model":
            judge = RewardModelJudge(spec.spec, batch_size=judge_args.judge_batch_size,
                                     max_length=judge_args.judge_max_length)
            reward = JudgeReward(spec.display_name, judge, device=device)  # cheap to rerun: not cached
        else:
            judge = load_judge(spec.spec, judge_args, default_kind="llm")
            if cache is None and cache_path is not None:
                cache = JudgmentCache(cache_path, read_also=read_also)
            reward = JudgeReward(spec.display_name, judge, cache, device)
        reward.load()
        rewards.append(reward)
    return rewards


# --------------------------------------------------------------------------------------------------------------------
# Verifiable rewards: GSM8K answer correctness

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GSM8K_ANSWER = re.compile(r"####\s*([^\n]*)")
# A word of prose (three letters or more, not a LaTeX command such as \sqrt): what tells a reasoning reply from a
# bare answer like (2, 3) or 3 \sqrt{2}.
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    position = text.index("{", start) + 1
    depth = 1
    for index in range(position, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[position:index].strip()
    return None  # unbalanced: the answer was cut off


def extract_final_answer(text: str) -> str | None:
    """The final answer of a solution: the last \\boxed{...}, else the last number in the text (commas kept for
    answers_match, a trailing '.' dropped); None when there is neither."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(".") if numbers else None


def reference_answer(reference: str) -> str:
    """The gold answer of a reference: the last \\boxed{...}; else GSM8K's final `#### N` line (its number, where
    units follow it); else, for a reference that is prose (a full reasoning reply, as sft rows give), its last
    number; else the reference itself, already a bare answer: 5,600, \\frac{1}{2}, (2, 3) or 3 \\sqrt{2}, whose last
    number would be a fragment of it."""
    boxed = last_boxed(reference)
    if boxed is not None:
        return boxed
    marked = _GSM8K_ANSWER.findall(reference)
    if marked and marked[-1].strip():
        answer = marked[-1].strip().rstrip(".")
        numbers = _NUMBER.findall(answer)
        return numbers[0].rstrip(".") if numbers and _PROSE_WORD.search(answer) else answer
    bare = reference.strip()
    numbers = _NUMBER.findall(bare)
    if numbers and _PROSE_WORD.search(bare):
        return numbers[-1].rstrip(".")
    return bare


def _plain(answer: str) -> str:
    return answer.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\%", "").replace("%", "").strip()


def answer_is_correct(prediction: str | None, reference: str) -> bool:
    """ToRA's answers_match on the extracted answers; a boxed answer with words or units around its number
    ('18 \\text{ dollars}') is compared by that number."""
    if prediction is None:
        return False
    prediction, gold = _plain(prediction), _plain(reference_answer(reference))
    if answers_match(prediction, gold):
        return True
    numbers = _NUMBER.findall(prediction)
    return len(numbers) == 1 and answers_match(numbers[0], gold)


def gsm8k_correctness(prompts, completions, reference=None, **kwargs) -> list[float | None]:
    """1.0 where the completion's final answer (last \\boxed{...}, else last number) matches the answer of the row's
    `reference` (reference_answer: the gold answer itself, or a reference solution ending in \\boxed{} or GSM8K's
    `#### N`, or its last number), else 0.0; None for a row without one."""
    if reference is None:
        raise ValueError("gsm8k_correctness needs the gold answer in a 'reference' column of the prompt rows (the "
                         "ToRA GSM8K rows give their 'gt'; sft rows their last assistant turn)")
    return [None if gold is None else float(answer_is_correct(extract_final_answer(completion_text(c)), str(gold)))
            for c, gold in zip(completions, reference, strict=True)]


def boxed_answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 where the completion ends with a \\boxed{...} answer, else 0.0: a shaping reward that teaches the answer
    format a correctness reward reads first."""
    return [float(last_boxed(completion_text(c)) is not None) for c in completions]
