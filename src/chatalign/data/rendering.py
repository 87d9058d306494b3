"""Rendering a chat into ``(input_ids, labels)`` with an assistant-only loss mask, and a preflight report of it.

``render_conversation`` turns a chat into ``(input_ids, labels)`` with ``labels == -100`` on every token the model
should not learn to produce (system, user and tool turns, role headers, bos). Templates with ``{% generation %}`` tags
(every shipped one, :mod:`chatalign.data.templates`) give the mask directly; templates without them (a model's own
template, say) are handled by rendering each assistant turn's prompt and comparing token prefixes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from chatalign.data.templates import (
    SINGLE_TOKEN_MARKERS,
    has_generation_tags,
    infer_stop_strings,
    list_templates,
    shipped_name,
)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Rendering with an assistant-only mask


def _template_text(tokenizer, tools=None) -> str:
    return tokenizer.get_chat_template(None, tools)


def _template_label(template: str) -> str:
    shipped = shipped_name(template)
    if shipped is not None:
        return f"'{shipped}'"
    first_line = template.strip().splitlines()[0] if template.strip() else ""
    return f"(custom template starting {first_line[:60]!r})"


def _coerce_tools(tools) -> list[dict] | None:
    if tools is None:
        return None
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else []
    return list(tools) or None


def render_conversation(
    tokenizer, messages: list[dict[str, Any]], max_length: int | None = None, tools=None
) -> tuple[list[int], list[int]]:
    """Render a chat with the tokenizer's chat template into ``(input_ids, labels)``.

    ``labels[i] == input_ids[i]`` on the tokens of assistant replies (the span inside ``{% generation %}``: reply and
    end-of-turn token) and ``-100`` everywhere else: system, user and tool turns, role headers, bos. Without
    generation tags the template falls back to prefix comparison (see :func:`_prefix_diff_labels`); both give the
    same labels on the shipped templates.

    ``tools`` (list of JSON schemas, or a JSON string of one) is passed to the template; a template that does not
    read ``tools`` raises rather than silently dropping them. ``max_length`` truncates on the right, keeping the
    start of the chat (system prompt and first turns), as transformers' tokenizer truncation does.
    """
    tools = _coerce_tools(tools)
    template = _template_text(tokenizer, tools)
    if tools and "tools" not in template:
        raise ValueError(
            f"chat template {_template_label(template)} does not render `tools`; describe the tools in the system "
            "message or use a template that renders them"
        )
    # The generation-tag mask maps character spans to tokens through the fast tokenizer's offsets.
    if has_generation_tags(template) and getattr(tokenizer, "is_fast", True):
        out = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
        )
        input_ids = list(out["input_ids"])
        labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(input_ids, out["assistant_masks"], strict=True)]
    else:
        input_ids, labels = _prefix_diff_labels(tokenizer, messages, tools=tools)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def render_conversations(tokenizer, conversations: list[list[dict[str, Any]]], tools: list | None = None
                         ) -> list[tuple[list[int], list[int]]]:
    """:func:`render_conversation` for many chats, with the same ids and labels (tested): where the template has
    generation tags and the tokenizer is fast, the chats without tools are rendered by one ``apply_chat_template``
    call and tokenized as one batch (the Rust tokenizer's own threads); every other chat is rendered alone."""
    tools = list(tools) if tools is not None else [None] * len(conversations)
    results: list[tuple[list[int], list[int]] | None] = [None] * len(conversations)
    plain = [i for i, row_tools in enumerate(tools) if not _coerce_tools(row_tools)]
    if plain and has_generation_tags(_template_text(tokenizer)) and getattr(tokenizer, "is_fast", True):
        out = tokenizer.apply_chat_template([conversations[i] for i in plain], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, add_generation_prompt=False)
        for i, ids, mask in zip(plain, out["input_ids"], out["assistant_masks"], strict=True):
            ids = list(ids)
            results[i] = (ids, [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, mask, strict=True)])
    for i, result in enumerate(results):
        if result is None:
            results[i] = render_conversation(tokenizer, conversations[i], tools=tools[i] or None)
    return results


def _encode_chat(
    tokenizer, messages, tools, add_generation_prompt: bool, chat_template: str | None = None
) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=chat_template,
            tokenize=True,
            return_dict=False,
            add_generation_prompt=add_generation_prompt,
        )
    )


def _end_of_turn_ids(tokenizer, template: str) -> set[int]:
    """Token ids that close an assistant turn: eos and every stop string that is a single token."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    unk = tokenizer.unk_token_id
    for stop in infer_stop_strings(template):
        tok_id = tokenizer.convert_tokens_to_ids(stop)
        if isinstance(tok_id, int) and tok_id != unk:
            ids.add(tok_id)
    return ids


def _prefix_diff_labels(
    tokenizer, messages: list[dict[str, Any]], tools=None, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """Assistant-only labels for a template without generation tags.

    For assistant turn i, the tokens of ``messages[:i]`` rendered with the generation prompt must be a prefix of the
    tokens of ``messages[:i+1]``, which must in turn be a prefix of the full chat; the tokens in between are the
    reply. Template text written after the reply's end-of-turn token (ChatML's "\\n" after <|im_end|>) is not
    something the model generates, so the span is cut after the last end-of-turn token it contains.
    """
    template = chat_template or _template_text(tokenizer, tools)
    full = _encode_chat(tokenizer, messages, tools, False, chat_template)
    labels = [IGNORE_INDEX] * len(full)
    end_ids = _end_of_turn_ids(tokenizer, template)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if i == 0:
            raise ValueError(
                f"chat template {_template_label(template)}: prefix-based masking needs a message before the "
                "assistant turn at index 0"
            )
        prompt = _encode_chat(tokenizer, messages[:i], tools, True, chat_template)
        turn = _encode_chat(tokenizer, messages[: i + 1], tools, False, chat_template)
        if turn[: len(prompt)] != prompt or full[: len(turn)] != turn:
            raise ValueError(
                f"chat template {_template_label(template)} is not prefix-consistent at message {i}: rendering the "
                "chat up to that assistant turn (with the generation prompt) does not give a token prefix of the "
                "full chat, so the assistant tokens cannot be located. Use a template with {% generation %} tags "
                "(e.g. a shipped one: " + ", ".join(list_templates()) + ")"
            )
        start, stop = len(prompt), len(turn)
        ends = [j for j in range(start, stop) if full[j] in end_ids]
        if ends:
            stop = ends[-1] + 1
        labels[start:stop] = full[start:stop]
    return full, labels


def render_prompt(tokenizer, messages: list[dict[str, Any]], tools=None) -> str:
    """The prompt text for generation: the chat rendered with the assistant generation prompt appended."""
    return tokenizer.apply_chat_template(
        messages, tools=_coerce_tools(tools), tokenize=False, add_generation_prompt=True
    )


# --------------------------------------------------------------------------------------------------------------------
# Preflight: show what is trained and flag setups that silently train the wrong thing


_GREEN, _RESET = "\033[32m", "\033[0m"


def preflight_report(
    tokenizer, messages: list[dict[str, Any]], tools=None, color: bool | None = None
) -> tuple[str, list[str]]:
    """Render one example with the trained tokens marked, and list problems with the tokenizer/template setup.

    Trained spans are wrapped in ``[[ ]]`` (or shown in green when ``color`` is true; by default only when stdout
    is a terminal). Warnings: no pad token, pad token equal to eos (a collator that masks pad ids then also masks
    the eos the model must learn), a template that ends assistant turns without eos or a stop string, control
    tokens that are not single tokens of this tokenizer, templates without generation tags (prefix fallback), and
    examples with nothing to train on.
    """
    if color is None:
        color = sys.stdout.isatty()
    template = _template_text(tokenizer, _coerce_tools(tools))
    input_ids, labels = render_conversation(tokenizer, messages, tools=tools)
    warnings: list[str] = []

    if tokenizer.pad_token is None:
        warnings.append("tokenizer has no pad_token: batching needs one; set a dedicated pad token (not eos)")
    elif tokenizer.eos_token is not None and tokenizer.pad_token == tokenizer.eos_token:
        warnings.append(
            f"pad_token == eos_token ({tokenizer.eos_token!r}): a collator that masks pad ids in the labels also "
            "masks the eos ending each reply, so the model never learns to stop; use a dedicated pad token"
        )
    if not has_generation_tags(template):
        warnings.append(
            f"chat template {_template_label(template)} has no {{% generation %}} tags; assistant tokens were "
            "located by prefix comparison"
        )

    stop_strings = infer_stop_strings(template)
    spans = _trained_spans(labels)
    if not spans:
        warnings.append("no trained tokens in this example (no assistant turn, or all were truncated)")
    for turn, (start, stop) in enumerate(spans):
        if input_ids[stop - 1] == tokenizer.eos_token_id:
            continue
        span_text = tokenizer.decode(input_ids[start:stop], skip_special_tokens=False)
        if not any(span_text.endswith(s) for s in stop_strings):
            warnings.append(
                f"assistant turn {turn} (tokens {start}-{stop - 1}) does not end with eos "
                f"({tokenizer.eos_token!r}) or a stop string {stop_strings}: the template does not teach the model "
                "to stop"
            )

    vocab = tokenizer.get_vocab()
    missing = [m for m in SINGLE_TOKEN_MARKERS if m in template and m not in vocab]
    if missing:
        warnings.append(
            f"the chat template writes {missing}, which this tokenizer splits into several tokens; add them as "
            "special tokens or use the model's own template"
        )

    n_trained = sum(1 for x in labels if x != IGNORE_INDEX)
    header = (
        f"chat template {_template_label(template)}: {len(input_ids)} tokens, {n_trained} trained "
        f"({100.0 * n_trained / max(len(input_ids), 1):.1f}%); trained spans "
        + ("in green" if color else "wrapped in [[ ]]")
    )
    body = []
    for start, stop, trained in _runs(labels):
        text = tokenizer.decode(input_ids[start:stop], skip_special_tokens=False)
        if trained:
            text = f"{_GREEN}{text}{_RESET}" if color else f"[[{text}]]"
        body.append(text)
    return header + "\n" + "".join(body), warnings


def _runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Consecutive runs of trained / untrained positions as (start, stop, trained)."""
    runs: list[tuple[int, int, bool]] = []
    for i, label in enumerate(labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][2] == trained:
            runs[-1] = (runs[-1][0], i + 1, trained)
        else:
            runs.append((i, i + 1, trained))
    return runs


def _trained_spans(labels: list[int]) -> list[tuple[int, int]]:
    return [(start, stop) for start, stop, trained in _runs(labels) if trained]


# --------------------------------------------------------------------------------------------------------------------
# An empty system message where the template renders one (alignment-handbook's auto_insert_empty_system_msg)


def template_renders_system(template: str) -> bool:
    """alignment-handbook's test (``maybe_insert_system_message``): the template mentions system or <|im_start|>."""
    return "system" in template or "<|im_start|>" in template


def with_empty_system_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with an empty system message first, unless it starts with a system message already."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": ""}, *messages]


def empty_system_message_inserter(schema: str):
    """A batched ``Dataset.map`` function giving every row of `schema` an empty system message (see above)."""
    column = "messages" if schema == "sft" else "prompt"

    def insert(batch):
        return {column: [with_empty_system_message(list(messages)) for messages in batch[column]]}

    return insert
