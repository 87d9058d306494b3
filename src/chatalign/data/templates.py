"""Chat templates: the shipped ones, how to pick one, and SGLang/FastChat JSON templates converted to jinja.

Shipped templates live in the top-level ``chat_templates/`` folder as ``<name>.jinja``. Each renders byte-identically
to its model's official template and wraps every assistant reply (content plus the end-of-turn token) in
``{% generation %}...{% endgeneration %}``, the tag transformers uses for ``return_assistant_tokens_mask``. The role
header stays outside the tag, so the model is trained on what it must write after the generation prompt: the reply and
the token that ends it. Rendering a chat with a template is :mod:`chatalign.data.rendering`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext

# The top-level chat_templates/ folder is the single source of the shipped templates. A regular (non-editable) install
# has no checkout to read it from, so setup.py copies it into the package at build time; an editable install and a
# plain checkout read the folder itself (src/chatalign/data/templates.py -> <checkout>/chat_templates/).
_PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
_CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[3] / "chat_templates"
TEMPLATE_DIR = _PACKAGED_TEMPLATES if _PACKAGED_TEMPLATES.is_dir() else _CHECKOUT_TEMPLATES


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


def shipped_name(template: str) -> str | None:
    """The name of the shipped template whose text this is, or None."""
    return _shipped_name_by_text().get(template)


@lru_cache(maxsize=1)
def _shipped_name_by_text() -> dict[str, str]:
    return {p.read_text(encoding="utf-8"): p.stem for p in TEMPLATE_DIR.glob("*.jinja")}


def resolve_chat_template(spec: str | os.PathLike) -> ChatTemplate:
    """Turn a template spec into a :class:`ChatTemplate` whose jinja parses (a syntax error names the file and line
    here, not at the first rendering). See :func:`_find_template` for what a spec may be."""
    chat_template = _find_template(spec)
    where = f"file '{chat_template.path}'" if chat_template.path else "given as a string"
    check_template_syntax(chat_template.template, where)
    return chat_template


class _GenerationTag(jinja2.ext.Extension):
    """transformers' {% generation %}...{% endgeneration %} tag, enough to parse a template that uses it."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


_PARSER = jinja2.Environment(extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])


def check_template_syntax(template: str, where: str = "(literal string)") -> None:
    """Parse the template as transformers renders it (jinja2, loop controls, generation tags); ValueError naming
    `where` and the line of a syntax error."""
    try:
        _PARSER.parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"chat template {where}, line {err.lineno}: {err.message}") from None


def _find_template(spec: str | os.PathLike) -> ChatTemplate:
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
