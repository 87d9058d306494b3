"""The LLM judge's prompts and the parsing of its verdicts."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
