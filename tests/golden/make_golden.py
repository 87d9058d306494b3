"""Regenerate the golden renderings in tests/golden/<template>.json from the OFFICIAL reference templates.

    python tests/golden/make_golden.py

Every golden text comes from rendering a reference template copied verbatim into tests/golden/official/ (see
SOURCE.md) with transformers' own renderer, or, for vicuna_v1.1, from strings written by hand from FastChat's spec.
Our shipped templates are never used here: the tests compare them against these files.
"""

import json
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

GOLDEN = Path(__file__).resolve().parent
OFFICIAL = GOLDEN / "official"

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "And of Italy? Answer in one word."}
A2 = {"role": "assistant", "content": "Rome."}
MATH = [
    {"role": "user", "content": "What is 12 * 7 + 5?"},
    {"role": "assistant", "content": "Let's compute it.\n```python\nprint(12 * 7 + 5)\n```"},
    {"role": "user", "content": "```output\n89\n```"},
    {"role": "assistant", "content": "The answer is $\\boxed{89}$."},
]
UNTRIMMED = [{"role": "user", "content": "  Hi \n"}, {"role": "assistant", "content": "\nHello there.  "}]

# (case name, messages, add_generation_prompt)
CASES = [
    ("system_multiturn", [SYSTEM, U1, A1, U2, A2], False),
    ("multiturn", [U1, A1, U2, A2], False),
    ("system_prompt", [SYSTEM, U1, A1, U2], True),
    ("prompt", [U1, A1, U2], True),
    ("prompt_without_generation_prompt", [U1, A1, U2], False),
    ("math_output_turn", MATH, False),
    ("untrimmed_whitespace", UNTRIMMED, False),
    ("assistant_last_with_generation_prompt", [U1, A1], True),
]


def chujiezheng(name: str) -> str:
    # These files are pretty-printed; their README strips them like this before use.
    return (OFFICIAL / name).read_text().replace("    ", "").replace("\n", "")


def official(name: str) -> str:
    return (OFFICIAL / name).read_text()


def render(template: str, messages, add_generation_prompt: bool, special_tokens: dict) -> str:
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt, **special_tokens
    )
    return rendered[0]


def fold_system(messages):
    """Gemma has no system role: put the system prompt in front of the first user turn, as gemma-it does."""
    if messages[0]["role"] != "system":
        return messages
    first = dict(messages[1])
    first["content"] = messages[0]["content"].strip() + "\n\n" + first["content"]
    return [first] + messages[2:]


# template -> (reference file, loader, special tokens of that model family, cross-check references)
REFERENCES = {
    "zephyr": ("zephyr_official.jinja", official, {"bos_token": "<s>", "eos_token": "</s>"}, []),
    "chatml": ("chatml_smollm.jinja", official, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, []),
    "llama-3": (
        "llama3.jinja",
        official,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ["llama-3-instruct.jinja"],
    ),
    "llama-2": ("llama-2-chat.jinja", chujiezheng, {"bos_token": "<s>", "eos_token": "</s>"}, []),
    "mistral": ("mistral-instruct.jinja", chujiezheng, {"bos_token": "<s>", "eos_token": "</s>"}, []),
    "gemma": ("gemma.jinja", official, {"bos_token": "<bos>", "eos_token": "<eos>"}, []),
}

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# Written by hand from FastChat's vicuna_v1.1 (ADD_COLON_TWO, sep=" ", sep2="</s>"):
#   "{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT:"
VICUNA_TEXTS = {
    "system_multiturn": "You are a helpful assistant. USER: What is the capital of France? ASSISTANT: The capital of "
    "France is Paris.</s>USER: And of Italy? Answer in one word. ASSISTANT: Rome.</s>",
    "multiturn": VICUNA_SYSTEM + " USER: What is the capital of France? ASSISTANT: The capital of France is "
    "Paris.</s>USER: And of Italy? Answer in one word. ASSISTANT: Rome.</s>",
    "system_prompt": "You are a helpful assistant. USER: What is the capital of France? ASSISTANT: The capital of "
    "France is Paris.</s>USER: And of Italy? Answer in one word. ASSISTANT:",
    "prompt": VICUNA_SYSTEM + " USER: What is the capital of France? ASSISTANT: The capital of France is "
    "Paris.</s>USER: And of Italy? Answer in one word. ASSISTANT:",
    "prompt_without_generation_prompt": VICUNA_SYSTEM + " USER: What is the capital of France? ASSISTANT: The "
    "capital of France is Paris.</s>USER: And of Italy? Answer in one word. ",
    "math_output_turn": VICUNA_SYSTEM + " USER: What is 12 * 7 + 5? ASSISTANT: Let's compute it.\n```python\n"
    "print(12 * 7 + 5)\n```</s>USER: ```output\n89\n``` ASSISTANT: The answer is $\\boxed{89}$.</s>",
    "untrimmed_whitespace": VICUNA_SYSTEM + " USER:   Hi \n ASSISTANT: \nHello there.  </s>",
    "assistant_last_with_generation_prompt": VICUNA_SYSTEM + " USER: What is the capital of France? ASSISTANT: The "
    "capital of France is Paris.</s>ASSISTANT:",
}


def build(name: str) -> dict:
    if name == "vicuna_v1.1":
        cases = [
            {"name": case, "messages": msgs, "add_generation_prompt": gen, "text": VICUNA_TEXTS[case]}
            for case, msgs, gen in CASES
        ]
        return {
            "template": name,
            "reference": "hand-written from FastChat vicuna_v1.1 (lm-sys/FastChat fastchat/conversation.py)",
            "special_tokens": {"bos_token": "<s>", "eos_token": "</s>"},
            "cases": cases,
        }
    ref_file, load, special_tokens, cross_checks = REFERENCES[name]
    template = load(ref_file)
    cases = []
    for case, msgs, gen in CASES:
        note = f"official/{ref_file}"
        rendered_msgs = msgs
        if name == "gemma" and msgs[0]["role"] == "system":
            # The official Gemma template raises on a system message; the reference is the official rendering of
            # the same chat with the system prompt folded into the first user turn.
            rendered_msgs = fold_system(msgs)
            note += " on the chat with the system message folded into the first user turn"
            gemma_it = special_tokens["bos_token"] + render(chujiezheng("gemma-it.jinja"), msgs, gen, special_tokens)
            assert gemma_it == render(template, rendered_msgs, gen, special_tokens), case
        text = render(template, rendered_msgs, gen, special_tokens)
        for other in cross_checks:
            assert render(chujiezheng(other), msgs, gen, special_tokens) == text, (name, other, case)
        cases.append({"name": case, "messages": msgs, "add_generation_prompt": gen, "text": text, "reference": note})
    return {"template": name, "reference": f"official/{ref_file}", "special_tokens": special_tokens, "cases": cases}


def main() -> None:
    for name in [*REFERENCES, "vicuna_v1.1"]:
        out = GOLDEN / f"{name}.json"
        out.write_text(json.dumps(build(name), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out.relative_to(GOLDEN.parent.parent)}")


if __name__ == "__main__":
    main()
