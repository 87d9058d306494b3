"""The canonical schemas themselves, and TRL's standard (string), prompt-completion and implicit-prompt formats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatalign.data.registry import register_adapter
from chatalign.data.schemas import InvalidRow, as_messages, check_message_list, type_name


@register_adapter("sft", schema="sft", required=("messages",), detect=[{"messages"}], priority=90, passthrough=True)
def _sft_passthrough(row: Mapping) -> dict:
    """Canonical sft rows ({messages}) as they are."""
    return {"messages": row["messages"]}


register_adapter("messages", schema="sft", required=("messages",), passthrough=True)(_sft_passthrough)


@register_adapter(
    "preference",
    schema="preference",
    required=("prompt", "chosen", "rejected"),
    detect=[{"prompt", "chosen", "rejected"}],
    priority=40,
    passthrough=True,
)
def _preference_passthrough(row: Mapping) -> dict:
    """Canonical preference rows; a string prompt becomes a user message, string chosen/rejected assistant messages."""
    return {
        "prompt": as_messages(row["prompt"], "user"),
        "chosen": as_messages(row["chosen"], "assistant"),
        "rejected": as_messages(row["rejected"], "assistant"),
    }


@register_adapter(
    "unpaired",
    schema="unpaired",
    required=("prompt", "completion", "label"),
    detect=[{"prompt", "completion", "label"}],
    priority=40,
    passthrough=True,
)
def _unpaired_passthrough(row: Mapping) -> dict:
    """Canonical unpaired rows; string prompt/completion are wrapped; label 0/1 becomes bool."""
    return {
        "prompt": as_messages(row["prompt"], "user"),
        "completion": as_messages(row["completion"], "assistant"),
        "label": row["label"],
    }


@register_adapter(
    "prompt_completion",
    schema="sft",
    required=("prompt", "completion"),
    detect=[{"prompt", "completion"}],
    exclude={"label"},
    priority=45,
)
def _prompt_completion_to_sft(row: Mapping) -> dict:
    """TRL prompt-completion rows (no label) -> sft messages = prompt + completion."""
    prompt = as_messages(row["prompt"], "user")
    completion = as_messages(row["completion"], "assistant")
    if not isinstance(prompt, list):
        raise InvalidRow("prompt", "bad type", f"expected a string or a list of messages, got {type_name(prompt)}")
    if not isinstance(completion, list):
        raise InvalidRow(
            "completion", "bad type", f"expected a string or a list of messages, got {type_name(completion)}"
        )
    return {"messages": prompt + completion}


@register_adapter("prompt", schema="prompt", required=("prompt",), detect=[{"prompt"}], priority=95, passthrough=True)
def _prompt_passthrough(row: Mapping) -> dict:
    """Canonical prompt rows; a string prompt becomes one user message."""
    return {"prompt": as_messages(row["prompt"], "user")}


def split_shared_prompt(
    chosen: Any, rejected: Any, chosen_field: str = "chosen", rejected_field: str = "rejected"
) -> tuple[list, list, list]:
    """Split two full conversations into (shared prompt, [last chosen turn], [last rejected turn]).

    Both must end with an assistant message and agree (role and content) on every earlier message; raises InvalidRow
    ("prefix mismatch" / "bad completion" / "bad type" / "empty conversation") otherwise.
    """
    for value, field in ((chosen, chosen_field), (rejected, rejected_field)):
        problem = check_message_list(value, field)
        if problem is not None:
            raise InvalidRow(problem.field, problem.reason, problem.detail)
        if value[-1]["role"] != "assistant":
            raise InvalidRow(
                f"{field}[{len(value) - 1}].role",
                "bad completion",
                f"last message must be 'assistant', got '{value[-1]['role']}'",
            )
    if len(chosen) != len(rejected):
        raise InvalidRow(
            rejected_field,
            "prefix mismatch",
            f"{chosen_field} has {len(chosen)} messages but {rejected_field} has {len(rejected)}; "
            "they must share every message before the final assistant turn",
        )
    for index, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=True)):
        if (a["role"], a["content"]) != (b["role"], b["content"]):
            raise InvalidRow(
                f"{rejected_field}[{index}]",
                "prefix mismatch",
                f"{chosen_field} and {rejected_field} differ at message {index}, before the final assistant turn",
            )
    return list(chosen[:-1]), [chosen[-1]], [rejected[-1]]


@register_adapter(
    "preference_implicit",
    schema="preference",
    required=("chosen", "rejected"),
    detect=[{"chosen", "rejected"}],
    exclude={"prompt", "conversations", "instruction"},
    priority=60,
)
def _preference_implicit(row: Mapping) -> dict:
    """TRL implicit-prompt preference rows (chosen/rejected are full conversations sharing the prompt)."""
    prompt, chosen, rejected = split_shared_prompt(row["chosen"], row["rejected"])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
