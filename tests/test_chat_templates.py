"""Shipped chat templates: byte-identical to the official ones, exact assistant-only masks, template resolution."""

import copy
import json
from pathlib import Path

import jinja2
import pytest

from chatalign.chat_templates import (
    IGNORE_INDEX,
    STOP_STRINGS,
    TEMPLATE_DIR,
    ChatTemplate,
    list_templates,
    preflight_report,
    render_conversation,
    render_prompt,
    resolve_chat_template,
    set_chat_template,
    sglang_template_to_jinja,
    strip_generation_tags,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
OFFICIAL = GOLDEN / "official"
SHIPPED = ["chatml", "gemma", "llama-2", "llama-3", "mistral", "vicuna_v1.1", "zephyr"]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "4 * 3 = 12.\nDone."},
]
# A ToRA-style math chat: the executed code's output comes back as a user turn and must not be trained on.
MATH_CHAT = [
    {"role": "user", "content": "What is 12 * 7 + 5?"},
    {"role": "assistant", "content": "Let's compute it.\n```python\nprint(12 * 7 + 5)\n```"},
    {"role": "user", "content": "```output\n89\n```"},
    {"role": "assistant", "content": "The answer is $\\boxed{89}$."},
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]


@pytest.fixture
def tok(tiny_tokenizer):
    """A private copy of the session tokenizer, so tests can change its template and pad token."""
    return copy.deepcopy(tiny_tokenizer)


def golden(name):
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def golden_cases():
    return [(name, case["name"]) for name in SHIPPED for case in golden(name)["cases"]]


def render_text(tokenizer, template, messages, add_generation_prompt, special_tokens):
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **special_tokens
    )


def chujiezheng(name):
    return (OFFICIAL / name).read_text().replace("    ", "").replace("\n", "")


# ---------------------------------------------------------------------------------------------------------------------
# Golden renderings
# ---------------------------------------------------------------------------------------------------------------------


def test_shipped_templates_are_the_expected_set():
    assert list_templates() == SHIPPED
    assert sorted(STOP_STRINGS) == SHIPPED
    for name in SHIPPED:
        assert resolve_chat_template(name).has_generation_tags


@pytest.mark.parametrize("name,case_name", golden_cases())
def test_shipped_template_renders_like_the_official_one(tok, name, case_name):
    data = golden(name)
    case = next(c for c in data["cases"] if c["name"] == case_name)
    ours = resolve_chat_template(name).template
    got = render_text(tok, ours, case["messages"], case["add_generation_prompt"], data["special_tokens"])
    assert got == case["text"]


OFFICIAL_LOADERS = {
    "zephyr": lambda: (OFFICIAL / "zephyr_official.jinja").read_text(),
    "chatml": lambda: (OFFICIAL / "chatml_smollm.jinja").read_text(),
    "llama-3": lambda: (OFFICIAL / "llama3.jinja").read_text(),
    "gemma": lambda: (OFFICIAL / "gemma.jinja").read_text(),
    "llama-2": lambda: chujiezheng("llama-2-chat.jinja"),
    "mistral": lambda: chujiezheng("mistral-instruct.jinja"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_LOADERS))
def test_golden_files_match_the_official_templates(tok, name):
    """The golden texts really are what the copied official templates render (so nobody edited them by hand)."""
    data = golden(name)
    official = OFFICIAL_LOADERS[name]()
    checked = 0
    for case in data["cases"]:
        messages = case["messages"]
        if name == "gemma" and messages[0]["role"] == "system":
            with pytest.raises(jinja2.TemplateError, match="System role not supported"):
                render_text(tok, official, messages, case["add_generation_prompt"], data["special_tokens"])
            folded = dict(messages[1], content=messages[0]["content"].strip() + "\n\n" + messages[1]["content"])
            messages = [folded] + messages[2:]
        assert (
            render_text(tok, official, messages, case["add_generation_prompt"], data["special_tokens"]) == case["text"]
        )
        checked += 1
    assert checked == 8


def test_vicuna_golden_follows_fastchat_format():
    case = next(c for c in golden("vicuna_v1.1")["cases"] if c["name"] == "system_prompt")
    assert case["text"] == (
        "You are a helpful assistant. USER: What is the capital of France? ASSISTANT: The capital of France is "
        "Paris.</s>USER: And of Italy? Answer in one word. ASSISTANT:"
    )


def test_gemma_accepts_system_where_official_raises(tok):
    ours = resolve_chat_template("gemma").template
    text = render_text(tok, ours, [SYSTEM] + CHAT[:1], True, {"bos_token": "<bos>"})
    assert text == (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Exact masks, built independently of the templates from each format's spec
# ---------------------------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("name", ["gemma", "llama-2", "mistral", "vicuna_v1.1"])
def test_tool_role_raises_where_the_format_has_none(tok, name):
    set_chat_template(tok, name)
    with pytest.raises(jinja2.TemplateError, match=f"{name} template: the 'tool' role is not supported"):
        render_conversation(tok, TOOL_CHAT)


def test_zephyr_rejects_unknown_roles(tok):
    set_chat_template(tok, "zephyr")
    with pytest.raises(jinja2.TemplateError, match="unknown role 'gpt'"):
        render_conversation(tok, [{"role": "gpt", "content": "x"}])


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


# ---------------------------------------------------------------------------------------------------------------------
# Resolving templates
# ---------------------------------------------------------------------------------------------------------------------


def test_resolve_shipped_name_and_stop_strings():
    ct = resolve_chat_template("llama-3")
    assert isinstance(ct, ChatTemplate)
    assert ct.name == "llama-3" and ct.path == TEMPLATE_DIR / "llama-3.jinja"
    assert ct.template == (TEMPLATE_DIR / "llama-3.jinja").read_text()
    assert ct.stop_strings == ["<|eot_id|>", "<|end_of_text|>"]
    assert resolve_chat_template("chatml").stop_strings == ["<|im_end|>"]
    assert resolve_chat_template("gemma").stop_strings[0] == "<end_of_turn>"
    assert resolve_chat_template("zephyr").stop_strings == ["</s>"]
    assert resolve_chat_template("vicuna_v1.1").stop_strings == ["</s>"]


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as err:
        resolve_chat_template("chatmll")
    message = str(err.value)
    assert "unknown chat template 'chatmll'" in message
    assert "Did you mean 'chatml'?" in message
    assert "Available templates: " + ", ".join(SHIPPED) in message
    with pytest.raises(ValueError, match="Available templates"):
        resolve_chat_template("no-such-template")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jinja"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


def test_resolve_jinja_path_and_literal(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(resolve_chat_template("chatml").template)
    ct = resolve_chat_template(path)
    assert (ct.name, ct.path, ct.stop_strings) == ("mine", path, ["<|im_end|>"])
    literal = "{% for m in messages %}{{ m['content'] + '<end_of_turn>' }}{% endfor %}"
    ct = resolve_chat_template(literal)
    assert (ct.name, ct.template, ct.path, ct.stop_strings) == ("custom", literal, None, ["<end_of_turn>"])


def test_resolve_transformers_chat_template_json(tmp_path):
    path = tmp_path / "chat_template.json"
    path.write_text(json.dumps({"chat_template": resolve_chat_template("llama-3").template}))
    ct = resolve_chat_template(path)
    assert ct.template == resolve_chat_template("llama-3").template
    assert ct.stop_strings == ["<|eot_id|>", "<|end_of_text|>"]


def test_set_chat_template_installs_it(tok):
    ct = set_chat_template(tok, "gemma")
    assert tok.chat_template == ct.template
    assert ct.stop_strings == ["<end_of_turn>", "<eos>"]


def test_strip_generation_tags_gives_a_plain_jinja_template_with_the_same_output(tok):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # no transformers extension
    for name in SHIPPED:
        template = resolve_chat_template(name).template
        plain = strip_generation_tags(template)
        assert "{%- generation" not in plain and "endgeneration" not in plain
        want = render_text(tok, template, CHAT, False, {})
        got = env.from_string(plain).render(messages=CHAT, add_generation_prompt=False, **tok.special_tokens_map)
        assert got == want


# ---------------------------------------------------------------------------------------------------------------------
# SGLang JSON templates
# ---------------------------------------------------------------------------------------------------------------------


def test_shipped_sglang_chatml_json_matches_chatml_jinja(tok):
    ct = resolve_chat_template(TEMPLATE_DIR / "chatml.json")
    assert ct.name == "chatml" and ct.path == TEMPLATE_DIR / "chatml.json"
    assert resolve_chat_template("chatml.json").template == ct.template  # shipped file by its file name
    assert ct.stop_strings == ["<|im_end|>", "<|im_start|>"]
    chatml = resolve_chat_template("chatml").template
    for messages, gen in [([SYSTEM] + CHAT, False), ([SYSTEM] + CHAT[:3], True), ([SYSTEM] + MATH_CHAT, False)]:
        assert render_text(tok, ct.template, messages, gen, {}) == render_text(tok, chatml, messages, gen, {})
    tok.chat_template = ct.template
    converted = render_conversation(tok, [SYSTEM] + MATH_CHAT)
    set_chat_template(tok, "chatml")
    assert converted == render_conversation(tok, [SYSTEM] + MATH_CHAT)


def test_sglang_json_without_system_writes_an_empty_system_block_like_sglang(tok):
    # SGLang builds system_template = system + "\n{system_message}", which is never empty, so its CHATML style
    # always writes the system block.
    ct = resolve_chat_template(TEMPLATE_DIR / "chatml.json")
    got = render_text(tok, ct.template, CHAT[:1], True, {})
    assert got == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_sglang_add_colon_two_conversion(tok, tmp_path):
    conf = {
        "name": "vicuna-json",
        "system": "",
        "system_message": 'Be brief, it\'s "short" \\ é.',
        "user": "USER",
        "assistant": "ASSISTANT",
        "sep_style": "ADD_COLON_TWO",
        "sep": " ",
        "sep2": "</s>",
        "stop_str": "</s>",
    }
    path = tmp_path / "vicuna.json"
    path.write_text(json.dumps(conf))
    ct = resolve_chat_template(path)
    assert (ct.name, ct.stop_strings) == ("vicuna-json", ["</s>"])
    # SGLang's get_prompt (ADD_COLON_TWO): system + sep, then role + ": " + message + [sep, sep2][i % 2], "ROLE:".
    expected = '\nBe brief, it\'s "short" \\ é. USER: What is 2+2? ASSISTANT: 2+2 = 4.</s>USER: And times 3? ASSISTANT:'
    assert render_text(tok, ct.template, CHAT[:3], True, {}) == expected
    tok.chat_template = ct.template
    tagged = render_conversation(tok, CHAT)
    trained = tok.decode([t for t in tagged[1] if t != IGNORE_INDEX])
    assert trained == " 2+2 = 4.</s> 4 * 3 = 12.\nDone.</s>"
    tok.chat_template = strip_generation_tags(ct.template)
    assert render_conversation(tok, CHAT) == tagged


def test_sglang_other_styles(tok):
    base = {"name": "x", "system": "SYS", "user": "<u>", "assistant": "<a>", "sep": "|", "stop_str": ["|"]}
    chat = [SYSTEM] + CHAT[:3]
    cases = {
        "ADD_COLON_SINGLE": "SYS\nYou are a helpful assistant.|<u>: What is 2+2?|<a>: 2+2 = 4.|<u>: And times 3?|<a>:",
        "ADD_COLON_SPACE_SINGLE": "SYS\nYou are a helpful assistant.|<u>: What is 2+2?|<a>: 2+2 = 4.|<u>: And times 3?|<a>: ",
        "NO_COLON_SINGLE": "SYS\nYou are a helpful assistant.<u>What is 2+2?|<a>2+2 = 4.|<u>And times 3?|<a>",
        "ADD_NEW_LINE_SINGLE": "SYS\nYou are a helpful assistant.|<u>\nWhat is 2+2?|<a>\n2+2 = 4.|<u>\nAnd times 3?|<a>\n",
    }
    for style, expected in cases.items():
        ct = sglang_template_to_jinja(dict(base, sep_style=style))
        assert render_text(tok, ct.template, chat, True, {}) == expected, style


def test_sglang_json_errors(tmp_path):
    bad_style = tmp_path / "bad_style.json"
    bad_style.write_text(json.dumps({"name": "x", "system": "", "user": "U", "assistant": "A", "sep_style": "LLAMA9"}))
    with pytest.raises(ValueError, match=r"bad_style.json', field 'sep_style': unsupported separator style 'LLAMA9'"):
        resolve_chat_template(bad_style)
    missing = tmp_path / "missing_user.json"
    missing.write_text(json.dumps({"name": "x", "system": "", "assistant": "A", "sep_style": "CHATML"}))
    with pytest.raises(ValueError, match=r"missing_user.json': missing field 'user'"):
        resolve_chat_template(missing)
    no_sep2 = tmp_path / "no_sep2.json"
    no_sep2.write_text(
        json.dumps({"name": "x", "system": "", "user": "U", "assistant": "A", "sep_style": "NO_COLON_TWO"})
    )
    with pytest.raises(ValueError, match="field 'sep2'"):
        resolve_chat_template(no_sep2)


def test_sglang_json_rejects_tool_messages(tok):
    tok.chat_template = resolve_chat_template(TEMPLATE_DIR / "chatml.json").template
    with pytest.raises(jinja2.TemplateError, match="role tool is not supported"):
        render_conversation(tok, TOOL_CHAT)


# ---------------------------------------------------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------------------------------------------------


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
