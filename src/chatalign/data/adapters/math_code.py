"""Tool-integrated math (ToRA / RLHF4MATH SFT_510K style): code-output turns and answer-checked trajectories."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from chatalign.data.registry import register_adapter
from chatalign.data.schemas import InvalidRow

# An executed-code block "```output\n...\n```" (possibly empty); an unterminated block is not split off.
_OUTPUT_BLOCK = re.compile(r"```output\n(?:.*?\n)?```", re.DOTALL)


def split_code_outputs(messages: list) -> list:
    """Split assistant messages at each ```output block into assistant / user(output block) / assistant turns.

    ``"...```python\\n...\\n```\\n```output\\n2\\n```\\nThe answer is 2."`` becomes assistant ``"...```python\\n...\\n```"``,
    user ``"```output\\n2\\n```"``, assistant ``"The answer is 2."`` (the newlines between the pieces are dropped).
    Messages without an output block, and non-assistant messages, are returned unchanged.
    """
    result = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if not (isinstance(content, str) and message.get("role") == "assistant" and _OUTPUT_BLOCK.search(content)):
            result.append(message)
            continue
        position = 0
        for match in _OUTPUT_BLOCK.finditer(content):
            result.append({"role": "assistant", "content": content[position : match.start()].strip("\n")})
            result.append({"role": "user", "content": match.group(0)})
            position = match.end()
        # Text after the last output block (usually the boxed answer); empty text is kept so validation reports it.
        result.append({"role": "assistant", "content": content[position:].strip("\n")})
    return result


@register_adapter(
    "math_code",
    schema="sft",
    required=("messages",),
    detect=[{"messages", "gt", "gt_cot"}],
    priority=55,
)
def _math_code_to_sft(row: Mapping) -> dict:
    """ToRA-style [user, assistant-with-```output-blocks] chats -> multi-turn chats (output blocks as user turns)."""
    messages = row["messages"]
    if isinstance(messages, list):
        messages = split_code_outputs(messages)
    return {"messages": messages}


def answers_match(prediction: Any, reference: Any) -> bool:
    """ToRA-style answer check: numbers (commas ignored) equal within 1e-4, otherwise stripped strings equal."""

    def number(value: Any) -> float | None:
        try:
            return float(str(value).replace(",", "").strip())
        except ValueError:
            return None

    a, b = number(prediction), number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-4)
    return str(prediction).strip() == str(reference).strip()


def _first(value: Any, field: str) -> Any:
    if isinstance(value, list):
        if not value:
            raise InvalidRow(field, "missing value", "list is empty")
        return value[0]
    return value


@register_adapter(
    "tora_gsm8k",
    schema="unpaired",
    required=("question", "code", "pred", "gt"),
    detect=[{"question", "code", "pred", "gt"}],
    emits=("prompt_id",),
    priority=25,
)
def _tora_trajectory_to_unpaired(row: Mapping) -> dict:
    """ToRA output trajectories (question, code[0], pred[0], gt) -> unpaired; label = pred matches gt numerically."""
    trajectory = _first(row["code"], "code")
    prediction = _first(row["pred"], "pred")
    idx = row.get("idx")
    return {
        "prompt": [{"role": "user", "content": row["question"]}],
        "completion": [{"role": "assistant", "content": trajectory}],
        "label": answers_match(prediction, row["gt"]) if prediction is not None else False,
        "prompt_id": None if idx is None else str(idx),
    }


@register_adapter(
    "tora_gsm8k_prompt",
    schema="prompt",
    required=("question", "gt"),
    detect=[{"question", "gt"}],
    emits=("prompt_id", "reference"),
    priority=25,
)
def _tora_question_to_prompt(row: Mapping) -> dict:
    """ToRA GSM8K rows (question, gt) -> prompt rows for RL: the question, with the gold answer as `reference`."""
    idx = row.get("idx")
    return {
        "prompt": [{"role": "user", "content": row["question"]}],
        "reference": None if row["gt"] is None else str(row["gt"]),
        "prompt_id": None if idx is None else str(idx),
    }
