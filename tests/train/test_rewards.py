"""chatalign.train.rewards: reward specs and their errors, the GSM8K correctness reward on exact strings, a reward model
read with its own tokenizer, and an LLM judge over a real HTTP path whose cache pays no judgment twice."""

from __future__ import annotations

import math
import re

import pytest
from conftest import build_tiny_classifier
from helpers.chat_stub import Stub

from chatalign.configs import ConfigError
from chatalign.train.rewards import (
    RewardSpec,
    boxed_answer_format,
    build_rewards,
    extract_final_answer,
    gsm8k_correctness,
    last_boxed,
    parse_reward_specs,
    reference_answer,
)

PROMPT = [{"role": "user", "content": "Janet has 16 eggs and eats 3. How many are left?"}]


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_final_answer_is_the_last_boxed_else_the_last_number():
    assert last_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{13}.") == "13"
    assert last_boxed("x = \\boxed{\\frac{1}{56}}") == "\\frac{1}{56}"  # nested braces
    assert last_boxed("cut off \\boxed{12") is None and last_boxed("no box") is None
    assert extract_final_answer("16 - 3 = 13 eggs.") == "13"
    assert extract_final_answer("It costs 5,600 dollars in total.") == "5,600"
    assert extract_final_answer("-7 is the answer") == "-7"
    assert extract_final_answer("no digits at all") is None


@pytest.mark.parametrize("completion, reward", [
    ("16 - 3 = 13. The answer is \\boxed{13}.", 1.0),
    ("She has $\\boxed{\\$13}$ left.", 1.0),
    ("\\boxed{13 \\text{ eggs}}", 1.0),  # the one number of a boxed answer with units
    ("First 16, then 3, so 13 remain", 1.0),  # no box: the last number
    ("\\boxed{13} ... no wait, 12", 1.0),  # a boxed answer wins over later numbers
    ("16 - 3 = 12.", 0.0),
    ("\\boxed{12}", 0.0),
    ("I do not know.", 0.0),
    ("13.00001", 1.0),  # answers_match: within 1e-4
])
def test_gsm8k_correctness_on_exact_strings(completion, reward):
    assert gsm8k_correctness([PROMPT], [said(completion)], reference=["13"]) == [reward]
    assert gsm8k_correctness([PROMPT], [completion], reference=["13"]) == [reward]  # plain-text completions too


def test_gsm8k_correctness_reads_commas_boxed_references_and_missing_ones():
    assert gsm8k_correctness([PROMPT] * 3, ["\\boxed{5600}", "It is 5,600.", "\\boxed{56}"],
                             reference=["5,600", "The answer is $\\boxed{5600}$.", None]) == [1.0, 1.0, None]
    with pytest.raises(ValueError, match="needs the gold answer in a 'reference' column"):
        gsm8k_correctness([PROMPT], ["13"])
    assert boxed_answer_format([PROMPT] * 2, [said("so \\boxed{4}"), said("4")]) == [1.0, 0.0]


GSM8K_REPLY = ("Janet eats 3 of the 16 eggs, so 16 - 3 = <<16-3=13>>13 are left; at $2 each she makes 13 * 2 = "
               "<<13*2=26>>26 dollars.\n#### 26")
# The box wins over the last number (16), as in a completion.
BOXED_REPLY = "She sells 16 - 3 = 13 eggs at $2: $\\boxed{26}$ dollars a day from her 16 eggs."


def test_gsm8k_correctness_reads_the_answer_of_a_full_reference_reply():
    """sft rows give their whole last reply as `reference`: its final answer is compared, not the reply."""
    assert reference_answer(GSM8K_REPLY) == "26" and reference_answer(BOXED_REPLY) == "26"
    assert reference_answer("It makes 5,600 dollars.") == "5,600"  # prose without a marker: its last number
    assert reference_answer("\\frac{1}{2}") == "\\frac{1}{2}" and reference_answer(" 18 ") == "18"  # bare answers
    # Bare answers with spaces are kept whole (their last number is a fragment); units after #### are dropped.
    assert [reference_answer(r) for r in ("(2, 3)", "[1, 4]", "3 \\sqrt{2}", "#### 18 dollars", "#### 1,000")] == [
        "(2, 3)", "[1, 4]", "3 \\sqrt{2}", "18", "1,000"]
    assert gsm8k_correctness([PROMPT] * 3, ["\\boxed{3}", "\\boxed{18}", "\\boxed{1000}"],
                             reference=["(2, 3)", "#### 18 dollars", "#### 1,000"]) == [0.0, 1.0, 1.0]
    completions = ["13 * 2 = 26, so \\boxed{26}.", "The answer is 26", "\\boxed{13}", "#### 16"]
    for reference in (GSM8K_REPLY, BOXED_REPLY):
        assert gsm8k_correctness([PROMPT] * 4, completions, reference=[reference] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_reward_specs_compact_and_mapping_forms_with_weights(tmp_path):
    (tmp_path / "rm").mkdir()
    specs = parse_reward_specs(["function:chatalign.train.rewards:gsm8k_correctness", f"reward_model:{tmp_path}/rm"],
                               reward_weights=[1.0, 0.5])
    assert specs == [RewardSpec("function", "chatalign.train.rewards:gsm8k_correctness", 1.0),
                     RewardSpec("reward_model", f"{tmp_path}/rm", 0.5)]
    assert [s.display_name for s in specs] == ["gsm8k_correctness", "reward_model_rm"]
    specs = parse_reward_specs([{"kind": "function", "spec": "chatalign.train.rewards:boxed_answer_format",
                                 "weight": 0.2, "name": "format"},
                                {"kind": "judge", "spec": "llm:judge@http://127.0.0.1:1/v1"}])
    assert [(s.display_name, s.weight) for s in specs] == [("format", 0.2), (specs[1].display_name, 1.0)]
    assert specs[1].display_name.startswith("judge_llm_judge")


@pytest.mark.parametrize("rewards, weights, message", [
    ([], None, "names no reward"),
    (["function:no_such_module_xyz:f"], None, "function 'no_such_module_xyz:f': cannot import module"),
    (["function:chatalign.train.rewards:no_such_reward"], None, "module 'chatalign.train.rewards' has no "
                                                                "'no_such_reward'"),
    (["function:chatalign.train.rewards"], None, "expected 'module:function'"),
    (["function:chatalign.train.rewards:REWARD_KINDS"], None, "is a tuple, not a function"),
    (["oracle:anything"], None, "unknown reward kind 'oracle'"),
    ([{"kind": "function", "spec": "chatalign.train.rewards:gsm8k_correctness", "wieght": 2}], None,
     "unknown key 'wieght'"),
    (["function:chatalign.train.rewards:gsm8k_correctness"], [1.0, 0.5], "reward_weights has 2 weights for 1 "
                                                                         "rewards"),
    ([{"kind": "function", "spec": "chatalign.train.rewards:gsm8k_correctness", "weight": 1}], [1.0],
     "both in rewards entries and in reward_weights"),
    ([{"kind": "function", "spec": "chatalign.train.rewards:gsm8k_correctness", "weight": "high"}], None,
     "weight must be a number"),
    (["function:chatalign.train.rewards:gsm8k_correctness"] * 2, None, "logged as 'gsm8k_correctness'"),
    (["reward_model:/no/such/rm"], None, "reward_model '/no/such/rm': no such checkpoint folder"),
    (["judge:pairrm:/tmp"], None, "a pairwise judge gives no reward"),
])
def test_bad_reward_specs_are_config_errors(rewards, weights, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_reward_specs(rewards, weights)


def test_reward_model_reads_completions_with_its_own_tokenizer_and_template(tmp_path, tiny_tokenizer):
    from chatalign.judges.models import RewardModelJudge

    rm_dir = build_tiny_classifier(tmp_path / "rm", tiny_tokenizer, seed=3)
    [reward] = build_rewards(parse_reward_specs([f"reward_model:{rm_dir}"]))
    assert reward.__name__ == "reward_model_rm"
    completions = [said("Thirteen eggs are left."), said("I like turtles."), said("Thirteen eggs are left.")]
    scores = reward([PROMPT] * 3, completions, reference=["13"] * 3)
    assert all(math.isfinite(s) for s in scores) and scores[0] == scores[2] != scores[1]
    judge = RewardModelJudge(str(rm_dir))  # the same scores as the judges layer gives the same texts
    direct = [j.value for j in judge.score_batch([(PROMPT, "Thirteen eggs are left."), (PROMPT, "I like turtles.")])]
    assert scores[:2] == pytest.approx(direct, abs=1e-5)
    text, _ = judge.text(PROMPT, "I like turtles.")
    assert text.startswith("<|im_start|>user\n")  # rendered with the checkpoint's own chat template


def rating_of(body) -> str:
    """The stub judge: 9 for a reply mentioning 13, else 3 (in the judges layer's verdict form)."""
    reply = body["messages"][-1]["content"].split("[Reply to rate]", 1)[1]
    return f"Fine. Rating: [[{9 if '13' in reply else 3}]]"


def test_llm_judge_reward_over_http_pays_each_judgment_once(tmp_path):
    with Stub(content=rating_of) as stub:
        spec = f"llm:stub-judge@{stub.url}"
        cache = tmp_path / "judgments.jsonl"
        [reward] = build_rewards(parse_reward_specs([f"judge:{spec}"]), cache_path=cache)
        completions = [said("13 eggs."), said("12 eggs."), said("13 eggs.")]
        assert reward([PROMPT] * 3, completions) == [9.0, 3.0, 9.0]
        assert len(stub.requests) == 2  # the repeated completion is judged once
        assert stub.requests[0]["model"] == "stub-judge"
        assert reward([PROMPT] * 3, completions) == [9.0, 3.0, 9.0]
        assert len(stub.requests) == 2  # a second identical call makes 0 requests
        # A later run (a new reward over the same cache file) pays nothing either.
        [again] = build_rewards(parse_reward_specs([f"judge:{spec}"]), cache_path=cache)
        assert again([PROMPT], [said("12 eggs.")]) == [3.0] and len(stub.requests) == 2
        assert len(cache.read_text().splitlines()) == 2


def test_llm_judge_reward_without_a_verdict_is_none():
    with Stub(content="I cannot rate this.") as stub:
        [reward] = build_rewards(parse_reward_specs([f"judge:llm:stub@{stub.url}"]))
        assert reward([PROMPT], [said("13")]) == [None]  # no parseable rating: no reward (NaN in TRL's statistics)
        assert len(stub.requests) == 1
