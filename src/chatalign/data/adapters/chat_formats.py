"""Common chat and preference formats: H4 UltraChat-200k and UltraFeedback-binarized, Alpaca (Stanford and
LLaMA-Factory, incl. pairwise), ShareGPT (LLaMA-Factory's sharegpt, pairwise and KTO variants)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatalign.data.adapters.canonical import split_shared_prompt
from chatalign.data.registry import register_adapter
from chatalign.data.schemas import InvalidRow, as_messages, check_content, type_name

# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face H4 datasets: UltraChat-200k and UltraFeedback-binarized


@register_adapter(
    "ultrachat",
    schema="sft",
    required=("messages",),
    detect=[{"prompt", "prompt_id", "messages"}],
    exclude={"chosen", "rejected"},
    priority=50,
)
def _ultrachat_to_sft(row: Mapping) -> dict:
    """HuggingFaceH4/ultrachat_200k (prompt, prompt_id, messages) -> sft messages, prompt_id kept."""
    return {"messages": row["messages"]}


@register_adapter(
    "ultrachat_prompt",
    schema="prompt",
    required=("messages",),
    detect=[{"prompt", "prompt_id", "messages"}],
    exclude={"chosen", "rejected"},
    emits=("reference",),
    priority=50,
)
def _ultrachat_to_prompt(row: Mapping) -> dict:
    """ultrachat_200k -> prompt rows for generation: messages up to the first user turn, reference = first reply."""
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return {"prompt": messages, "reference": None}  # the validator reports the exact problem
    first_user = next(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"), len(messages) - 1
    )
    prompt = messages[: first_user + 1]
    reply = messages[first_user + 1] if first_user + 1 < len(messages) else None
    reference = reply.get("content") if isinstance(reply, Mapping) and reply.get("role") == "assistant" else None
    return {"prompt": prompt, "reference": reference}


@register_adapter(
    "ultrafeedback",
    schema="preference",
    required=("chosen", "rejected"),
    detect=[{"prompt", "chosen", "rejected", "messages"}],
    priority=10,
)
def _ultrafeedback_to_preference(row: Mapping) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized (chosen/rejected = full conversations) -> preference; scores kept."""
    prompt, chosen, rejected = split_shared_prompt(row["chosen"], row["rejected"])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# ----------------------------------------------------------------------------------------------------------------------
# Alpaca (Stanford and LLaMA-Factory)


def _alpaca_messages(row: Mapping, joiner: str, response_column: str | None = "output") -> list:
    def text(column: str, required: bool) -> str:
        value = row.get(column)
        if value is None:
            if required:
                raise InvalidRow(column, "missing value", "value is missing")
            return ""
        if not isinstance(value, str):
            raise InvalidRow(column, "bad type", f"{column} must be a string, got {type_name(value)}")
        return value

    instruction, query = text("instruction", True), text("input", False)
    messages: list[dict] = []
    system = text("system", False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise InvalidRow(
            "history", "bad type", f"history must be a list of [prompt, response] pairs, got {type_name(history)}"
        )
    for index, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise InvalidRow(f"history[{index}]", "bad type", "expected a [prompt, response] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    # Joining rule: non-empty instruction and non-empty input are joined by `joiner`; an empty part is left out.
    parts = [part for part in (instruction, query) if part.strip()]
    messages.append({"role": "user", "content": joiner.join(parts)})
    if response_column is not None:
        messages.append({"role": "assistant", "content": text(response_column, True)})
    return messages


@register_adapter(
    "alpaca", schema="sft", required=("instruction", "output"), detect=[{"instruction", "output"}], priority=70
)
def _alpaca_to_sft(row: Mapping) -> dict:
    """Alpaca (instruction, input, output, optional system/history) -> sft; user = instruction + "\\n\\n" + input."""
    return {"messages": _alpaca_messages(row, "\n\n")}


@register_adapter("llama_factory_alpaca", schema="sft", required=("instruction", "output"))
def _llama_factory_alpaca_to_sft(row: Mapping) -> dict:
    """LLaMA-Factory alpaca -> sft; as alpaca but joined like LLaMA-Factory does: instruction + "\\n" + input."""
    return {"messages": _alpaca_messages(row, "\n")}


@register_adapter(
    "llama_factory_alpaca_pairwise",
    schema="preference",
    required=("instruction", "chosen", "rejected"),
    detect=[{"instruction", "chosen", "rejected"}],
    priority=20,
)
def _llama_factory_alpaca_pairwise(row: Mapping) -> dict:
    """LLaMA-Factory alpaca preference rows (instruction, input, chosen, rejected strings) -> preference."""
    return {
        "prompt": _alpaca_messages(row, "\n", response_column=None),
        "chosen": as_messages(row["chosen"], "assistant"),
        "rejected": as_messages(row["rejected"], "assistant"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# ShareGPT (and LLaMA-Factory's sharegpt variants)

SHAREGPT_ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",  # the model's tool call, kept as text (LLaMA-Factory trains on it)
    "observation": "tool",
    "tool": "tool",
}


def sharegpt_message(turn: Any, field: str) -> dict:
    """One ShareGPT turn ({from, value}, or {role, content}) -> canonical message; InvalidRow names unknown roles."""
    if not isinstance(turn, Mapping):
        raise InvalidRow(field, "bad type", f"expected a dict with 'from' and 'value', got {type_name(turn)}")
    role_key = "from" if turn.get("from") is not None or "role" not in turn else "role"
    content_key = "value" if turn.get("value") is not None or "content" not in turn else "content"
    speaker = turn.get(role_key)
    if speaker is None:
        raise InvalidRow(f"{field}.{role_key}", "missing value", f"'{role_key}' is missing")
    if not isinstance(speaker, str):
        raise InvalidRow(f"{field}.{role_key}", "bad type", f"'{role_key}' must be a string, got {type_name(speaker)}")
    role = SHAREGPT_ROLES.get(speaker.lower())
    if role is None:
        raise InvalidRow(
            f"{field}.{role_key}",
            "unknown role",
            f"unknown sharegpt role '{speaker}' (expected one of {', '.join(SHAREGPT_ROLES)})",
        )
    content = turn.get(content_key)
    problem = check_content(content, f"{field}.{content_key}")
    if problem is not None:
        raise InvalidRow(problem.field, problem.reason, problem.detail)
    return {"role": role, "content": content}


def _sharegpt_conversation(row: Mapping, column: str) -> list[dict]:
    turns = row.get(column)
    if turns is None:
        raise InvalidRow(column, "missing value", "value is missing")
    if not isinstance(turns, list):
        raise InvalidRow(column, "bad type", f"expected a list of turns, got {type_name(turns)}")
    messages = [sharegpt_message(turn, f"{column}[{i}]") for i, turn in enumerate(turns)]
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidRow("system", "bad type", f"system must be a string, got {type_name(system)}")
    # A system turn inside the conversation wins over the system column (LLaMA-Factory's rule).
    if system and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


@register_adapter(
    "sharegpt",
    schema="sft",
    required=("conversations",),
    detect=[{"conversations"}],
    exclude={"chosen", "rejected", "kto_tag", "label"},
    priority=80,
)
def _sharegpt_to_sft(row: Mapping) -> dict:
    """ShareGPT (conversations [{from, value}], optional system, tools) -> sft; tools kept as a JSON string."""
    out = {"messages": _sharegpt_conversation(row, "conversations")}
    if "tools" in row:
        out["tools"] = row["tools"]
    return out


register_adapter("llama_factory_sharegpt", schema="sft", required=("conversations",))(_sharegpt_to_sft)


@register_adapter(
    "llama_factory_sharegpt_pairwise",
    schema="preference",
    required=("conversations", "chosen", "rejected"),
    detect=[{"conversations", "chosen", "rejected"}],
    priority=20,
)
def _sharegpt_pairwise_to_preference(row: Mapping) -> dict:
    """LLaMA-Factory sharegpt preference (conversations + chosen/rejected {from, value}) -> preference."""
    out = {"prompt": _sharegpt_conversation(row, "conversations")}
    for column in ("chosen", "rejected"):
        value = row.get(column)
        out[column] = (
            [sharegpt_message(value, column)] if isinstance(value, Mapping) else as_messages(value, "assistant")
        )
    return out


@register_adapter(
    "llama_factory_kto",
    schema="unpaired",
    required=(("messages", "conversations"), ("label", "kto_tag")),
    detect=[{"messages", "label"}, {"conversations", "kto_tag"}, {"messages", "kto_tag"}, {"conversations", "label"}],
    exclude={"prompt", "completion"},
    priority=30,
)
def _kto_to_unpaired(row: Mapping) -> dict:
    """LLaMA-Factory KTO (messages|conversations + label|kto_tag) -> unpaired; the last (assistant) turn is the completion."""
    column = "messages" if "messages" in row else "conversations"
    messages = _sharegpt_conversation(row, column)
    if not messages:
        raise InvalidRow(column, "empty conversation", "conversation is empty")
    if messages[-1]["role"] != "assistant":
        raise InvalidRow(
            f"{column}[{len(row[column]) - 1}]",
            "bad last turn",
            f"a KTO conversation must end with an 'assistant' message, got '{messages[-1]['role']}'",
        )
    label = row["label"] if "label" in row else row.get("kto_tag")
    return {"prompt": messages[:-1], "completion": [messages[-1]], "label": label}
