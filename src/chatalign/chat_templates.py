"""Chat templates: the shipped ones, how to pick one, and how to render a chat into ids with an assistant-only loss mask.

Shipped templates live in the top-level ``chat_templates/`` folder as ``<name>.jinja``. Each renders byte-identically
to its model's official template and wraps every assistant reply (content plus the end-of-turn token) in
``{% generation %}...{% endgeneration %}``, the tag transformers uses for ``return_assistant_tokens_mask``. The role
header stays outside the tag, so the model is trained on what it must write after the generation prompt: the reply and
the token that ends it.

``render_conversation`` turns a chat into ``(input_ids, labels)`` with ``labels == -100`` on every token the model
should not learn to produce (system, user and tool turns, role headers, bos). Templates without generation tags (a
model's own template, say) are handled by rendering each assistant turn's prompt and comparing token prefixes.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100

# Repo layout (the package is installed editable): src/chatalign/chat_templates.py -> <repo>/chat_templates/
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "chat_templates"

# What a server should stop on for each shipped template: the end-of-turn marker first, then the end-of-text token the
# model family also stops on. Reference: chujiezheng/chat_templates generation_configs/*.json (stop_token_ids).
STOP_STRINGS: dict[str, list[str]] = {
    "chatml": ["<|im_end|>"],
    "gemma": ["<end_of_turn>", "<eos>"],
    "llama-2": ["</s>"],
    "llama-3": ["<|eot_id|>", "<|end_of_text|>"],
    "mistral": ["</s>"],
    "vicuna_v1.1": ["</s>"],
    "zephyr": ["</s>"],
}

# End-of-turn markers looked for in templates we did not ship (a user's .jinja, a model's own template), so they get
# stop strings too and the preflight check knows what a finished assistant turn looks like.
KNOWN_END_OF_TURN_MARKERS = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>", "<|endoftext|>", "</s>"]

# Markers that are single special tokens in every model family whose template writes them. (Zephyr's <|user|> and
# Llama-2's [INST] are plain text for their own tokenizers, so they are not checked.)
SINGLE_TOKEN_MARKERS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
]

# Same pattern transformers uses to decide whether a template supports return_assistant_tokens_mask.
_GENERATION_TAG_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_GENERATION_OPEN_RE = re.compile(r"\{%(-?)\s*generation\s*(-?)%\}")
_GENERATION_CLOSE_RE = re.compile(r"\{%(-?)\s*endgeneration\s*(-?)%\}")

SGLANG_SEP_STYLES = (
    "ADD_COLON_SINGLE",
    "ADD_COLON_TWO",
    "ADD_COLON_SPACE_SINGLE",
    "NO_COLON_SINGLE",
    "NO_COLON_TWO",
    "ADD_NEW_LINE_SINGLE",
    "CHATML",
)


@dataclass
class ChatTemplate:
    """A resolved chat template: its name, jinja source, what to stop generation on, and where it came from."""

    name: str
    template: str
    stop_strings: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def has_generation_tags(self) -> bool:
        return has_generation_tags(self.template)


# --------------------------------------------------------------------------------------------------------------------
# Finding templates
# --------------------------------------------------------------------------------------------------------------------


def list_templates() -> list[str]:
    """Names of the shipped templates (``chat_templates/<name>.jinja``), sorted."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def has_generation_tags(template: str) -> bool:
    return bool(_GENERATION_TAG_RE.search(template))


def strip_generation_tags(template: str) -> str:
    """The same template without ``{% generation %}`` tags, for jinja engines that do not know them.

    vLLM and SGLang render through transformers and accept the tags, but plain jinja2 users (llama-cpp-python,
    text-generation-webui, axolotl's template analyser) fail with "unknown tag 'generation'". Each tag becomes an
    always-true ``if`` with the same whitespace control, so the rendering is unchanged.
    """
    template = _GENERATION_OPEN_RE.sub(lambda m: "{%" + m.group(1) + " if true " + m.group(2) + "%}", template)
    return _GENERATION_CLOSE_RE.sub(lambda m: "{%" + m.group(1) + " endif " + m.group(2) + "%}", template)


def infer_stop_strings(template: str) -> list[str]:
    """Stop strings for a template: the table entry if it is a shipped template, else the end-of-turn markers it writes."""
    shipped = _shipped_name_by_text().get(template)
    if shipped is not None:
        return list(STOP_STRINGS.get(shipped, []))
    return [marker for marker in KNOWN_END_OF_TURN_MARKERS if marker in template]


@lru_cache(maxsize=1)
def _shipped_name_by_text() -> dict[str, str]:
    return {p.read_text(encoding="utf-8"): p.stem for p in TEMPLATE_DIR.glob("*.jinja")}


def resolve_chat_template(spec: str | os.PathLike) -> ChatTemplate:
    """Turn a template spec into a :class:`ChatTemplate`.

    ``spec`` is, in this order of precedence:
      * a literal jinja string (contains ``{%`` or ``{{``) -> name "custom";
      * the name of a shipped template (see :func:`list_templates`);
      * a path to a ``.jinja`` file (any existing non-JSON file is read as jinja), or the file name of a file in the
        shipped folder (``"chatml.json"``);
      * a path to a ``.json`` file: an SGLang/FastChat conversation template (``name``, ``system``, ``user``,
        ``assistant``, ``sep_style``, ``sep``, ``stop_str``; see :func:`sglang_template_to_jinja`) or a transformers
        ``chat_template.json`` (``{"chat_template": "..."}``).
    """
    if isinstance(spec, str) and ("{%" in spec or "{{" in spec):
        return ChatTemplate(name="custom", template=spec, stop_strings=infer_stop_strings(spec), path=None)
    spec_str = os.fspath(spec)
    names = list_templates()
    if spec_str in names:
        path = TEMPLATE_DIR / f"{spec_str}.jinja"
        return ChatTemplate(
            name=spec_str,
            template=path.read_text(encoding="utf-8"),
            stop_strings=list(STOP_STRINGS.get(spec_str, [])),
            path=path,
        )
    path = Path(spec_str).expanduser()
    if not path.is_file() and (TEMPLATE_DIR / spec_str).is_file():
        path = TEMPLATE_DIR / spec_str  # a shipped file by its file name, e.g. "chatml.json"
    if path.is_file():
        if path.suffix == ".json":
            return _load_json_template(path)
        text = path.read_text(encoding="utf-8")
        return ChatTemplate(name=path.stem, template=text, stop_strings=infer_stop_strings(text), path=path)
    if path.suffix in (".jinja", ".json") or os.sep in spec_str or "/" in spec_str:
        raise FileNotFoundError(f"chat template file '{spec_str}' does not exist")
    close = difflib.get_close_matches(spec_str, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown chat template '{spec_str}'.{hint} Available templates: {', '.join(names)} "
        "(or pass a .jinja/.json path or a literal jinja string)"
    )


def set_chat_template(tokenizer, spec: str | os.PathLike) -> ChatTemplate:
    """Resolve ``spec`` and install it as ``tokenizer.chat_template``; returns the template with its stop strings."""
    chat_template = resolve_chat_template(spec)
    tokenizer.chat_template = chat_template.template
    return chat_template


# --------------------------------------------------------------------------------------------------------------------
# SGLang / FastChat JSON templates
# --------------------------------------------------------------------------------------------------------------------


def _load_json_template(path: Path) -> ChatTemplate:
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"chat template file '{path}': invalid JSON ({err})") from None
    if not isinstance(conf, dict):
        raise ValueError(f"chat template file '{path}': expected a JSON object, got {type(conf).__name__}")
    if "chat_template" in conf:  # transformers' chat_template.json
        text = conf["chat_template"]
        if not isinstance(text, str):
            raise ValueError(f"chat template file '{path}', field 'chat_template': expected a string")
        return ChatTemplate(name=path.stem, template=text, stop_strings=infer_stop_strings(text), path=path)
    chat_template = sglang_template_to_jinja(conf, source=str(path))
    chat_template.path = path
    return chat_template


def _jinja_literal(value: str) -> str:
    # Python's repr only uses escapes (\\, \', \n, \xNN, \uNNNN) that jinja's string-literal lexer also decodes.
    return repr(value)


def sglang_template_to_jinja(conf: dict[str, Any], source: str = "<dict>") -> ChatTemplate:
    """Convert an SGLang ``--chat-template`` JSON template into an equivalent jinja template with generation tags.

    Follows SGLang's loader (``_load_json_chat_template``) and ``Conversation.get_prompt``: the system prompt is
    ``system + "\\n" + system_message`` where system_message is the chat's leading system message or the file's
    ``system_message`` (default ""), roles are ``user``/``assistant``, ``sep`` defaults to "\\n". So, exactly as
    SGLang renders it, the system block is always written, even empty. FastChat's ``sep2`` is accepted for the
    ``*_TWO`` styles (SGLang's loader drops it, which makes those styles unusable there). Tool messages raise, as
    SGLang rejects them. The trained span of an assistant turn is what the model writes after the generation prompt:
    the reply plus the separator that ends it.
    """

    def field_(key: str, required: bool = True, default: Any = None) -> Any:
        if key not in conf:
            if required:
                raise ValueError(f"chat template file '{source}': missing field '{key}' (SGLang JSON template)")
            return default
        return conf[key]

    name = field_("name")
    style = field_("sep_style")
    if style not in SGLANG_SEP_STYLES:
        raise ValueError(
            f"chat template file '{source}', field 'sep_style': unsupported separator style {style!r} "
            f"(supported: {', '.join(SGLANG_SEP_STYLES)})"
        )
    strings = {
        key: field_(key, required=key in ("system", "user", "assistant"), default=default)
        for key, default in (
            ("system", None),
            ("user", None),
            ("assistant", None),
            ("sep", "\n"),
            ("system_message", ""),
        )
    }
    for key, value in strings.items():
        if not isinstance(value, str):
            raise ValueError(f"chat template file '{source}', field '{key}': expected a string, got {value!r}")
    sep, sep2 = strings["sep"], conf.get("sep2")
    if style.endswith("_TWO") and not isinstance(sep2, str):
        raise ValueError(f"chat template file '{source}', field 'sep2': sep_style {style} needs a string 'sep2'")
    stop_str = conf.get("stop_str")
    stop_strings = [] if stop_str is None else [stop_str] if isinstance(stop_str, str) else list(stop_str)

    lit = _jinja_literal
    # role header -> text between the role and the content; gen_suffix is what add_generation_prompt writes after the
    # assistant role; lead is the part of the reply the model writes before the content (" " after "ROLE:").
    head, lead, gen_suffix, tail = {
        "ADD_COLON_SINGLE": (":", " ", ":", ""),
        "ADD_COLON_TWO": (":", " ", ":", ""),
        "ADD_COLON_SPACE_SINGLE": (": ", "", ": ", ""),
        "NO_COLON_SINGLE": ("", "", "", ""),
        "NO_COLON_TWO": ("", "", "", ""),
        "ADD_NEW_LINE_SINGLE": ("\n", "", "\n", ""),
        "CHATML": ("\n", "", "\n", "\n"),
    }[style]
    system_suffix = {"NO_COLON_SINGLE": "", "NO_COLON_TWO": "", "CHATML": sep + "\n"}.get(style, sep)
    sep_expr = f"[{lit(sep)}, {lit(sep2)}][loop.index0 % 2]" if style.endswith("_TWO") else lit(sep)

    template = (
        f"{{#- converted from SGLang JSON chat template '{name}' (sep_style {style}) -#}}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system_message = {lit(strings['system_message'])} -%}}"
        "{%- set loop_messages = messages -%}{%- endif -%}"
        f"{{{{- {lit(strings['system'] + chr(10))} + system_message + {lit(system_suffix)} -}}}}"
        "{%- for message in loop_messages -%}"
        f"{{%- set sep = {sep_expr} -%}}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{- {lit(strings['user'] + head + lead)} + message['content'] + sep + {lit(tail)} -}}}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- {lit(strings['assistant'] + head)} -}}}}"
        f"{{%- generation -%}}{{{{- {lit(lead)} + message['content'] + sep -}}}}{{%- endgeneration -%}}"
        f"{{{{- {lit(tail)} -}}}}"
        "{%- else -%}"
        f"{{{{- raise_exception({lit(f'chat template {name!r} (SGLang JSON): role ')} + message['role'] + "
        f"{lit(' is not supported (expected user or assistant after an optional system message)')}) -}}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {lit(strings['assistant'] + gen_suffix)} -}}}}{{%- endif -%}}"
    )
    return ChatTemplate(name=name, template=template, stop_strings=stop_strings, path=None)


# --------------------------------------------------------------------------------------------------------------------
# Rendering with an assistant-only mask
# --------------------------------------------------------------------------------------------------------------------


def _template_text(tokenizer, tools=None) -> str:
    return tokenizer.get_chat_template(None, tools)


def _template_label(template: str) -> str:
    shipped = _shipped_name_by_text().get(template)
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
# --------------------------------------------------------------------------------------------------------------------

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
