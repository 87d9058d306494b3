"""chatalign.judges.prompts: what an LLM judge is shown and how its verdicts are parsed."""

from __future__ import annotations

import pytest

from chatalign.judges.prompts import (
    SINGLE_SYSTEM_PROMPT,
    pair_judge_messages,
    parse_rating,
    parse_verdict,
    single_judge_messages,
)


@pytest.mark.parametrize("text, expected", [
    ("Clear and correct.\nRating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("The format is [[5]] ... final: [[9]]", 9.0),   # the last verdict wins
    ("Rating: 3", 3.0),                              # no brackets: the 'Rating:' fallback
    ("Rating: [4]", 4.0),
    ("Rating: [[11]]", None),                        # out of range: unparseable, not clipped
    ("Rating: [[0]]", None),
    ("I like it a lot.", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("A is better. [[A]]", "A"), ("[[b]]", "B"), ("tie [[C]]", "C"), ("[[A]] no wait [[B]]", "B"),
    ("A is better", None), ("[[D]]", None), (None, None)])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_judge_prompts_show_the_conversation_and_the_reply():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a fruit."}]
    messages = single_judge_messages(prompt, "Apple.")
    assert messages[0] == {"role": "system", "content": SINGLE_SYSTEM_PROMPT}
    assert messages[1]["content"] == ("[Conversation]\nSystem: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\n"
                                      "User: Name a fruit.\n\n[Reply to rate]\nApple.\n[End of reply]")
    assert 'Rating: [[7]]' in SINGLE_SYSTEM_PROMPT
    pair = pair_judge_messages(prompt[-1:], "Apple.", "A car.")
    assert pair[1]["content"] == ("[Conversation]\nUser: Name a fruit.\n\n[Reply A]\nApple.\n[End of reply A]\n\n"
                                  "[Reply B]\nA car.\n[End of reply B]")
