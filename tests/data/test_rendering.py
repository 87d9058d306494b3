"""chatalign.data.rendering: (ids, labels) with exact assistant-only masks, token by token, and the preflight report."""


import json

import pytest
from helpers.template_cases import CHAT, MATH_CHAT, OFFICIAL, SHIPPED, SYSTEM, TOOL_CHAT

from chatalign.data.rendering import (
    IGNORE_INDEX,
    preflight_report,
    render_conversation,
    render_conversations,
    render_prompt,
)
from chatalign.data.templates import (
    resolve_chat_template,
    set_chat_template,
    strip_generation_tags,
)


def segments_chatml(messages, bos, eos):
    segs = []
    for m in messages:
        if m["role"] == "assistant":
            segs += [("<|im_start|>assistant\n", False), (m["content"] + "<|im_end|>", True), ("\n", False)]
        else:
            segs.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
    return segs


def segments_zephyr(messages, bos, eos):
    segs = []
    for m in messages:
        if m["role"] == "assistant":
            segs += [("<|assistant|>\n", False), (m["content"] + eos, True), ("\n", False)]
        else:
            segs.append((f"<|{m['role']}|>\n{m['content']}{eos}\n", False))
    return segs


def segments_llama3(messages, bos, eos):
    segs = [(bos, False)]
    for m in messages:
        segs.append((f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", False))
        segs.append((m["content"].strip() + "<|eot_id|>", m["role"] == "assistant"))
    return segs


def segments_gemma(messages, bos, eos):
    segs, system = [(bos, False)], ""
    if messages[0]["role"] == "system":
        system, messages = messages[0]["content"].strip() + "\n\n", messages[1:]
    for i, m in enumerate(messages):
        content = (system + m["content"] if i == 0 else m["content"]).strip()
        if m["role"] == "assistant":
            segs += [("<start_of_turn>model\n", False), (content + "<end_of_turn>", True), ("\n", False)]
        else:
            segs.append((f"<start_of_turn>user\n{content}<end_of_turn>\n", False))
    return segs


def segments_llama2(messages, bos, eos):
    segs, system = [], ""
    if messages[0]["role"] == "system":
        system, messages = f"<<SYS>>\n{messages[0]['content'].strip()}\n<</SYS>>\n\n", messages[1:]
    for i, m in enumerate(messages):
        content = (system + m["content"] if i == 0 else m["content"]).strip()
        if m["role"] == "assistant":
            segs.append((f" {content} {eos}", True))
        else:
            segs.append((f"{bos}[INST] {content} [/INST]", False))
    return segs


def segments_mistral(messages, bos, eos):
    system = ""
    if messages[0]["role"] == "system":
        system, messages = messages[0]["content"].strip() + "\n\n", messages[1:]
    segs = [(bos + system, False)]
    for m in messages:
        if m["role"] == "assistant":
            segs.append((f" {m['content'].strip()}{eos}", True))
        else:
            segs.append((f"[INST] {m['content'].strip()} [/INST]", False))
    return segs


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def segments_vicuna(messages, bos, eos):
    system = VICUNA_SYSTEM
    if messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    segs = [(system + " ", False)]
    for m in messages:
        if m["role"] == "assistant":
            segs += [("ASSISTANT:", False), (f" {m['content']}{eos}", True)]
        else:
            segs.append((f"USER: {m['content']} ", False))
    return segs


SEGMENTS = {
    "chatml": segments_chatml,
    "zephyr": segments_zephyr,
    "llama-3": segments_llama3,
    "gemma": segments_gemma,
    "llama-2": segments_llama2,
    "mistral": segments_mistral,
    "vicuna_v1.1": segments_vicuna,
}


def expected_ids_and_labels(tokenizer, segments):
    """Tokenize each maximal run of trained / untrained text on its own; a reply's tokens are its own."""
    merged = []
    for text, trained in segments:
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        else:
            merged.append((text, trained))
    ids, labels = [], []
    for text, trained in merged:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("chat_name", ["system_chat", "chat", "math_chat"])
def test_masks_token_by_token(tok, name, chat_name):
    messages = {"system_chat": [SYSTEM] + CHAT, "chat": CHAT, "math_chat": MATH_CHAT}[chat_name]
    set_chat_template(tok, name)
    input_ids, labels = render_conversation(tok, messages)
    want_ids, want_labels = expected_ids_and_labels(tok, SEGMENTS[name](messages, tok.bos_token, tok.eos_token))
    assert input_ids == want_ids
    assert labels == want_labels
    # The trained tokens are exactly the replies plus their end-of-turn marker, nothing from other turns.
    trained = tok.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    for reply in replies:
        assert reply.strip() in trained
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] not in trained


@pytest.mark.parametrize("name", ["chatml", "zephyr", "llama-3"])
def test_math_output_turn_is_fully_masked(tok, name):
    set_chat_template(tok, name)
    input_ids, labels = render_conversation(tok, MATH_CHAT)
    output_ids = tok("```output\n89\n```", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(input_ids)) if input_ids[i : i + len(output_ids)] == output_ids]
    assert len(starts) == 1
    start = starts[0]
    assert labels[start : start + len(output_ids)] == [IGNORE_INDEX] * len(output_ids)
    # ...while the reply right after it is trained and ends with the template's end-of-turn token.
    last_trained = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert last_trained > start
    end_marker = {"chatml": "<|im_end|>", "zephyr": tok.eos_token, "llama-3": "<|eot_id|>"}[name]
    assert input_ids[last_trained] == tok.convert_tokens_to_ids(end_marker)


def test_chatml_mask_on_tiny_example_is_exact(tok):
    set_chat_template(tok, "chatml")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    input_ids, labels = render_conversation(tok, messages)
    head = tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    reply = tok("Hello", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert input_ids == head + reply + newline
    assert labels == [IGNORE_INDEX] * len(head) + reply + [IGNORE_INDEX] * len(newline)


@pytest.mark.parametrize("name", ["chatml", "zephyr", "llama-3"])
def test_tool_turns_are_rendered_and_masked(tok, name):
    set_chat_template(tok, name)
    input_ids, labels = render_conversation(tok, TOOL_CHAT)
    text = tok.decode(input_ids, skip_special_tokens=False)
    header = {"chatml": "<|im_start|>tool\n", "zephyr": "<|tool|>\n", "llama-3": "<|start_header_id|>tool"}[name]
    assert header + ('{"temperature": 21}' if name != "llama-3" else "") in text
    trained = tok.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)
    assert "temperature" not in trained
    assert "It is 21 degrees." in trained and "get_weather" in trained


@pytest.mark.parametrize("tagged", [True, False], ids=["generation-tags", "prefix-fallback"])
@pytest.mark.parametrize("name", SHIPPED)
def test_rendering_many_chats_at_once_equals_one_at_a_time(tok, name, tagged):
    chats = [[SYSTEM] + CHAT, CHAT, MATH_CHAT, CHAT[:2], [SYSTEM] + MATH_CHAT]
    tools = [None] * len(chats)
    if name in ("chatml", "zephyr", "llama-3"):  # the templates with a tool role: one tool chat, in the middle
        chats.insert(2, TOOL_CHAT)
        tools.insert(2, None)
    template = resolve_chat_template(name).template
    tok.chat_template = template if tagged else strip_generation_tags(template)
    one_at_a_time = [render_conversation(tok, chat, tools=row_tools) for chat, row_tools in zip(chats, tools, strict=True)]
    assert render_conversations(tok, chats, tools) == one_at_a_time
    assert render_conversations(tok, chats[:1]) == one_at_a_time[:1] and render_conversations(tok, []) == []
    assert all(any(label != IGNORE_INDEX for label in labels) for _, labels in one_at_a_time)
    # A row with tool schemas is rendered alone, so a template that cannot show them says so as it does alone.
    schemas = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with pytest.raises(ValueError, match="does not render `tools`"):
        render_conversations(tok, chats, [None, schemas] + [None] * (len(chats) - 2))


@pytest.mark.parametrize("name", SHIPPED)
def test_prefix_fallback_gives_the_same_labels_as_generation_tags(tok, name):
    chats = [[SYSTEM] + CHAT, CHAT, MATH_CHAT] + ([TOOL_CHAT] if name in ("chatml", "zephyr", "llama-3") else [])
    template = resolve_chat_template(name).template
    for messages in chats:
        tok.chat_template = template
        tagged = render_conversation(tok, messages)
        tok.chat_template = strip_generation_tags(template)  # no tags -> prefix comparison
        assert render_conversation(tok, messages) == tagged
        assert any(label != IGNORE_INDEX for label in tagged[1])


@pytest.mark.parametrize(
    "name,official",
    [("chatml", "chatml_smollm.jinja"), ("zephyr", "zephyr_official.jinja"), ("llama-3", "llama3.jinja")],
)
def test_official_template_without_tags_masks_like_ours(tok, name, official):
    """A model's own template (no generation tags) goes through the fallback and gives our labels."""
    set_chat_template(tok, name)
    ours = render_conversation(tok, [SYSTEM] + MATH_CHAT)
    tok.chat_template = (OFFICIAL / official).read_text()
    assert render_conversation(tok, [SYSTEM] + MATH_CHAT) == ours


def test_non_prefix_consistent_template_without_tags_raises(tok):
    # The generation prompt says "assistant" but replies are rendered under "bot": prompts are not prefixes.
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' else m['role']) + '\n' "
        "+ m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="not prefix-consistent at message 1.*generation"):
        render_conversation(tok, CHAT)


def test_truncation_keeps_the_left_part(tok):
    set_chat_template(tok, "chatml")
    full_ids, full_labels = render_conversation(tok, CHAT)
    ids, labels = render_conversation(tok, CHAT, max_length=12)
    assert ids == full_ids[:12] and labels == full_labels[:12]
    assert render_conversation(tok, CHAT, max_length=10_000) == (full_ids, full_labels)


def test_prompt_only_chat_has_no_trained_tokens(tok):
    set_chat_template(tok, "llama-3")
    ids, labels = render_conversation(tok, [SYSTEM, CHAT[0]])
    assert len(ids) > 0 and set(labels) == {IGNORE_INDEX}


def test_tools_need_a_template_that_renders_them(tok):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    set_chat_template(tok, "chatml")
    with pytest.raises(ValueError, match="does not render `tools`"):
        render_conversation(tok, CHAT, tools=tools)
    assert render_conversation(tok, CHAT, tools="[]") == render_conversation(tok, CHAT)  # empty: nothing to drop
    tok.chat_template = (
        "{% if tools %}{{ '<|im_start|>system\n' + (tools | tojson) + '<|im_end|>\n' }}{% endif %}"
        + resolve_chat_template("chatml").template
    )
    ids, labels = render_conversation(tok, CHAT, tools=json.dumps(tools))
    assert "get_weather" in tok.decode(ids)
    assert "get_weather" not in tok.decode([t for t in labels if t != IGNORE_INDEX])


def test_render_prompt_appends_the_generation_prompt(tok):
    set_chat_template(tok, "chatml")
    assert render_prompt(tok, [SYSTEM, CHAT[0]]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    set_chat_template(tok, "vicuna_v1.1")
    assert render_prompt(tok, [CHAT[0]]) == VICUNA_SYSTEM + " USER: What is 2+2? ASSISTANT:"


def test_preflight_marks_trained_spans_and_is_quiet_when_all_is_well(tok):
    set_chat_template(tok, "chatml")
    text, warnings = preflight_report(tok, [SYSTEM] + CHAT, color=False)
    assert warnings == []
    assert "[[2+2 = 4.<|im_end|>]]\n<|im_start|>user\nAnd times 3?<|im_end|>" in text
    assert "[[4 * 3 = 12.\nDone.<|im_end|>]]" in text
    body = text.split("\n", 1)[1]  # first line is the summary
    assert body.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert "[[" not in body.split("<|im_start|>assistant")[0]  # nothing before the first reply is trained
    colored, _ = preflight_report(tok, CHAT, color=True)
    assert "\033[32m2+2 = 4.<|im_end|>\033[0m" in colored and "[[" not in colored


def test_preflight_warns_when_pad_is_eos_or_missing(tok):
    set_chat_template(tok, "chatml")
    tok.pad_token = tok.eos_token
    _, warnings = preflight_report(tok, CHAT, color=False)
    assert len(warnings) == 1 and "pad_token == eos_token" in warnings[0]
    tok.pad_token = None
    _, warnings = preflight_report(tok, CHAT, color=False)
    assert len(warnings) == 1 and "no pad_token" in warnings[0]


def test_preflight_warns_when_replies_do_not_end_with_eos(tok):
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
    )
    _, warnings = preflight_report(tok, CHAT, color=False)
    assert len(warnings) == 2
    assert all("does not end with eos" in w for w in warnings)
    assert "assistant turn 0" in warnings[0] and "assistant turn 1" in warnings[1]


def test_preflight_flags_fallback_and_empty_examples(tok):
    tok.chat_template = (OFFICIAL / "chatml_smollm.jinja").read_text()
    text, warnings = preflight_report(tok, CHAT, color=False)
    assert len(warnings) == 1 and "no {% generation %} tags" in warnings[0]
    assert "[[2+2 = 4.<|im_end|>]]" in text
    set_chat_template(tok, "chatml")
    _, warnings = preflight_report(tok, [CHAT[0]], color=False)
    assert warnings == ["no trained tokens in this example (no assistant turn, or all were truncated)"]


def test_empty_system_message_where_the_template_renders_one(tok):
    from chatalign.data.rendering import template_renders_system, with_empty_system_message
    from chatalign.data.templates import resolve_chat_template

    zephyr = resolve_chat_template("zephyr").template
    assert template_renders_system(zephyr) and template_renders_system(resolve_chat_template("chatml").template)
    assert not template_renders_system("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    chat = with_empty_system_message(CHAT[:2])
    assert chat[0] == {"role": "system", "content": ""} and chat[1:] == CHAT[:2]
    assert with_empty_system_message([SYSTEM, *CHAT[:2]]) == [SYSTEM, *CHAT[:2]]  # never a second one
    tok.chat_template = zephyr
    text = tok.apply_chat_template(chat, tokenize=False)
    eos = tok.eos_token
    assert text == f"<|system|>\n{eos}\n<|user|>\nWhat is 2+2?{eos}\n<|assistant|>\n2+2 = 4.{eos}\n"
    ids, labels = render_conversation(tok, chat)
    trained = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert trained == f"2+2 = 4.{eos}"  # the inserted system turn is masked like any other
