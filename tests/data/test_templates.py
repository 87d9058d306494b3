"""chatalign.data.templates: the shipped templates against the official ones (golden files), resolving a template
spec, SGLang JSON templates."""


import json

import jinja2
import pytest
from helpers.template_cases import CHAT, GOLDEN, MATH_CHAT, OFFICIAL, SHIPPED, SYSTEM, TOOL_CHAT

from chatalign.data.rendering import IGNORE_INDEX, render_conversation
from chatalign.data.templates import (
    STOP_STRINGS,
    TEMPLATE_DIR,
    ChatTemplate,
    list_templates,
    resolve_chat_template,
    set_chat_template,
    sglang_template_to_jinja,
    strip_generation_tags,
)


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


@pytest.mark.parametrize("name", ["gemma", "llama-2", "mistral", "vicuna_v1.1"])
def test_tool_role_raises_where_the_format_has_none(tok, name):
    set_chat_template(tok, name)
    with pytest.raises(jinja2.TemplateError, match=f"{name} template: the 'tool' role is not supported"):
        render_conversation(tok, TOOL_CHAT)


def test_zephyr_rejects_unknown_roles(tok):
    set_chat_template(tok, "zephyr")
    with pytest.raises(jinja2.TemplateError, match="unknown role 'gpt'"):
        render_conversation(tok, [{"role": "gpt", "content": "x"}])


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
