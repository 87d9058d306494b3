"""Built-in dataset-format adapters: raw rows of common chat/preference formats -> canonical chatalign rows.

Each adapter is registered in :mod:`chatalign.formatting`'s registry (:func:`~chatalign.formatting.register_adapter`)
when this module is imported, which :mod:`chatalign.formatting` does itself at the end of its import, so
``get_adapter``, ``list_adapters``, ``detect_format`` and ``normalize_dataset`` always see the built-in formats. The
registration order below is the tie-break among adapters of equal priority in auto-detection; keep it.

Formats: the canonical schemas themselves and TRL's standard (string) and implicit-prompt variants; Hugging Face H4
UltraChat-200k and UltraFeedback-binarized; Alpaca (Stanford and LLaMA-Factory, incl. pairwise); ShareGPT
(LLaMA-Factory's sharegpt, pairwise and KTO variants); tool-integrated math (ToRA / RLHF4MATH); Open-Assistant
message trees (dataset-level). Helpers usable on their own: :func:`split_shared_prompt`, :func:`sharegpt_message`,
:func:`split_code_outputs`, :func:`answers_match`, :func:`oasst_trees_to_conversations`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chatalign.formatting import (
    Adapter,
    DataValidationError,
    InvalidRow,
    _add_adapter,
    _as_messages,
    _type_name,
    check_content,
    check_message_list,
    register_adapter,
    validate_messages,
)

# ----------------------------------------------------------------------------------------------------------------------
# Passthrough adapters (already canonical, or TRL's standard string format)


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
        "prompt": _as_messages(row["prompt"], "user"),
        "chosen": _as_messages(row["chosen"], "assistant"),
        "rejected": _as_messages(row["rejected"], "assistant"),
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
        "prompt": _as_messages(row["prompt"], "user"),
        "completion": _as_messages(row["completion"], "assistant"),
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
    prompt = _as_messages(row["prompt"], "user")
    completion = _as_messages(row["completion"], "assistant")
    if not isinstance(prompt, list):
        raise InvalidRow("prompt", "bad type", f"expected a string or a list of messages, got {_type_name(prompt)}")
    if not isinstance(completion, list):
        raise InvalidRow(
            "completion", "bad type", f"expected a string or a list of messages, got {_type_name(completion)}"
        )
    return {"messages": prompt + completion}


@register_adapter("prompt", schema="prompt", required=("prompt",), detect=[{"prompt"}], priority=95, passthrough=True)
def _prompt_passthrough(row: Mapping) -> dict:
    """Canonical prompt rows; a string prompt becomes one user message."""
    return {"prompt": _as_messages(row["prompt"], "user")}


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
            raise InvalidRow(column, "bad type", f"{column} must be a string, got {_type_name(value)}")
        return value

    instruction, query = text("instruction", True), text("input", False)
    messages: list[dict] = []
    system = text("system", False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise InvalidRow(
            "history", "bad type", f"history must be a list of [prompt, response] pairs, got {_type_name(history)}"
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
        "chosen": _as_messages(row["chosen"], "assistant"),
        "rejected": _as_messages(row["rejected"], "assistant"),
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
        raise InvalidRow(field, "bad type", f"expected a dict with 'from' and 'value', got {_type_name(turn)}")
    role_key = "from" if turn.get("from") is not None or "role" not in turn else "role"
    content_key = "value" if turn.get("value") is not None or "content" not in turn else "content"
    speaker = turn.get(role_key)
    if speaker is None:
        raise InvalidRow(f"{field}.{role_key}", "missing value", f"'{role_key}' is missing")
    if not isinstance(speaker, str):
        raise InvalidRow(f"{field}.{role_key}", "bad type", f"'{role_key}' must be a string, got {_type_name(speaker)}")
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
        raise InvalidRow(column, "bad type", f"expected a list of turns, got {_type_name(turns)}")
    messages = [sharegpt_message(turn, f"{column}[{i}]") for i, turn in enumerate(turns)]
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidRow("system", "bad type", f"system must be a string, got {_type_name(system)}")
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
            [sharegpt_message(value, column)] if isinstance(value, Mapping) else _as_messages(value, "assistant")
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


# ----------------------------------------------------------------------------------------------------------------------
# Tool-integrated math (ToRA / RLHF4MATH SFT_510K style)

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


# ----------------------------------------------------------------------------------------------------------------------
# Open-Assistant message trees (dataset-level)

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class _OasstNode:
    row: int
    message_id: str
    parent_id: str | None
    role: str
    text: str
    rank: float | None
    tree_id: str
    children: list


def oasst_trees_to_conversations(
    rows: Iterable[Mapping],
    best_only: bool = True,
    lang: str | Iterable[str] | None = None,
    *,
    source: str = "oasst",
    skip_invalid: bool = False,
    counts: Counter | None = None,
) -> list[dict]:
    """Open-Assistant message rows (OASST1/2 schema) -> sft rows ``{"messages", "prompt_id"=message_tree_id}``.

    Each tree is rebuilt from parent_id links. ``best_only`` follows, from the root, the best-ranked child at each
    step (rank 0 = best; unranked after ranked; ties by input order); otherwise every root-to-leaf path is emitted.
    A path ending with a prompter message loses that message; paths left without an assistant reply are dropped.
    Deleted messages, messages with review_result False and (with ``lang``) other languages are skipped together with
    their replies. Skips are counted in ``counts`` ("deleted", "failed review", "other language", "unreachable" for
    replies under a skipped or absent message, "no assistant reply" per dropped path). Malformed messages raise
    DataValidationError (row = message row) unless ``skip_invalid``, which counts them by reason.
    """
    counts = counts if counts is not None else Counter()
    languages = {lang} if isinstance(lang, str) else (set(lang) if lang is not None else None)

    def bad(index: int, field: str, reason: str, detail: str) -> None:
        if not skip_invalid:
            raise DataValidationError(source, detail, row=index, field=field, reason=reason)
        counts[reason] += 1

    nodes: dict[str, _OasstNode] = {}
    for index, row in enumerate(rows):
        message_id, role, text = row.get("message_id"), row.get("role"), row.get("text")
        if not isinstance(message_id, str) or not message_id:
            bad(index, "message_id", "missing value", "message_id is missing")
            continue
        if row.get("deleted"):
            counts["deleted"] += 1
            continue
        if row.get("review_result") is False:
            counts["failed review"] += 1
            continue
        if languages is not None and row.get("lang") not in languages:
            counts["other language"] += 1
            continue
        if role not in OASST_ROLES:
            bad(index, "role", "unknown role", f"unknown role {role!r} (expected one of prompter, assistant)")
            continue
        problem = check_content(text, "text")
        if problem is not None:
            bad(index, "text", problem.reason, problem.detail)
            continue
        parent_id = row.get("parent_id")
        rank = row.get("rank")
        nodes[message_id] = _OasstNode(
            index,
            message_id,
            parent_id,
            OASST_ROLES[role],
            text,
            None if rank is None else float(rank),
            row.get("message_tree_id") or message_id,
            [],
        )

    roots = []
    for node in nodes.values():
        if node.parent_id is None:
            roots.append(node)
        elif node.parent_id in nodes:
            nodes[node.parent_id].children.append(node)
    reachable = 0

    def best_child(node: _OasstNode) -> _OasstNode:
        # Stable sort keeps input order among equal ranks; None (unranked) after every ranked reply.
        return sorted(node.children, key=lambda c: (c.rank is None, c.rank or 0.0))[0]

    paths: list[list[_OasstNode]] = []
    for root in roots:
        if best_only:
            path = [root]
            while path[-1].children:
                path.append(best_child(path[-1]))
            paths.append(path)
        else:
            stack = [[root]]
            while stack:
                path = stack.pop()
                if path[-1].children:
                    stack.extend(path + [child] for child in reversed(path[-1].children))
                else:
                    paths.append(path)
        # Count the whole tree as reachable, whatever paths were picked.
        todo = [root]
        while todo:
            current = todo.pop()
            reachable += 1
            todo.extend(current.children)
    counts["unreachable"] += len(nodes) - reachable
    if not counts["unreachable"]:
        del counts["unreachable"]

    conversations, seen = [], set()
    for path in paths:
        if path[-1].role == "user":
            path = path[:-1]
        if not any(node.role == "assistant" for node in path):
            counts["no assistant reply"] += 1
            continue
        key = tuple(node.message_id for node in path)
        if key in seen:  # two prompter leaves under one reply trim to the same path
            continue
        seen.add(key)
        messages = [{"role": node.role, "content": node.text} for node in path]
        problem = validate_messages(messages, "messages", final_roles=("assistant",))
        if problem is not None:
            match = re.match(r"messages\[(\d+)\]", problem.field)
            node = path[int(match.group(1))] if match else path[0]
            bad(node.row, "role", problem.reason, problem.detail + " (in the OASST message tree)")
            continue
        conversations.append({"messages": messages, "prompt_id": path[0].tree_id})
    return conversations


_add_adapter(
    Adapter(
        name="oasst",
        schema="sft",
        convert=None,
        required_columns=("message_id", "parent_id", "role", "text"),
        detect=(frozenset({"message_id", "parent_id", "message_tree_id", "role", "text"}),),
        priority=5,
        description="Open-Assistant message trees -> sft conversations (dataset-level, best-ranked path per tree).",
        convert_dataset=oasst_trees_to_conversations,
    ),
    replace=False,
)
