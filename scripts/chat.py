"""Chat with any checkpoint in the terminal: multi-turn, streamed, with the checkpoint's chat template.

    python scripts/chat.py --model outputs/smollm2-135m-sft
    python scripts/chat.py --model HuggingFaceTB/SmolLM2-135M-Instruct --temperature 0 --system "Answer briefly."
    python scripts/chat.py --model data/mistral-7b-sft-full --chat_template zephyr --device cuda --dtype bfloat16

Type a message at `user> `; the reply streams after `assistant> ` and every later reply sees the whole conversation.
Commands: /system <text> (the system message of the whole conversation; /system alone clears it; a template without
a system role says so), /reset (a new conversation, the system message kept), /save <file> (the conversation as one
chatalign sft row {"messages": [...]}, written atomically), /help, /quit or Ctrl-D. Ctrl-C stops a streaming reply
(the turn is dropped); a message starting with "//" is sent with one slash.

The prompt is the chat template (--chat_template: a shipped name, a .jinja/.json file or a jinja string; default the
checkpoint's own) on the conversation, and generation stops at the template's end-of-turn token(s). When the prompt
plus --max_new_tokens would exceed --max_context (default: the model's max_position_embeddings) the message is refused
with a notice to /save and /reset; old turns are never dropped behind your back. --temperature 0 is greedy decoding
(the same text as chatalign.generation.local); above 0 each reply is sampled with a seed from --seed and the
conversation, so a replayed conversation gets the same replies.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from chatalign.configs import ChatalignParser


@dataclass
class ChatArguments:
    model: str | None = field(default=None, metadata={"help": "Checkpoint to chat with: a local folder or hub id."})
    revision: str = field(default="main", metadata={"help": "Hub revision of the checkpoint."})
    trust_remote_code: bool = False
    chat_template: str | None = field(
        default=None, metadata={"help": "Template to chat with (default: the checkpoint's own): a shipped name "
                                        "(chatml, zephyr, llama-3, ...), a .jinja/.json file or a jinja string."})
    system: str | None = field(default=None, metadata={"help": "System message to start with (/system changes it)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply, in tokens."})
    temperature: float = field(default=0.7, metadata={"help": "0: greedy decoding."})
    top_p: float = 0.9
    seed: int = field(default=0, metadata={"help": "Sampling seed (hashed with the conversation for each reply)."})
    device: str = field(default="auto", metadata={"help": "auto (cuda, mps, else cpu), cpu, cuda, cuda:1, ..."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "auto: the checkpoint's dtype on an accelerator, float32 on cpu."})
    max_context: int | None = field(
        default=None, metadata={"help": "Tokens of prompt plus reply allowed (default: max_position_embeddings)."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("give the checkpoint to chat with: --model <folder or hub id>")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_context is not None and self.max_context <= self.max_new_tokens:
            raise ValueError(f"max_context ({self.max_context}) must be larger than max_new_tokens "
                             f"({self.max_new_tokens}): no prompt would fit")


def make_parser() -> ChatalignParser:
    return ChatalignParser([ChatArguments])


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv=None) -> None:
    (args,) = make_parser().parse(argv)
    import transformers
    from transformers import AutoModelForCausalLM

    from chatalign.data.templates import infer_stop_strings, set_chat_template, shipped_name
    from chatalign.data.tokenizers import load_tokenizer, set_stop_tokens
    from chatalign.generation.chat_session import (
        ChatSession,
        chat_loop,
        context_limit,
        pick_device,
        pick_dtype,
        stream_reply,
    )
    from chatalign.generation.params import SamplingParams

    transformers.logging.set_verbosity_error()  # generation warnings would land in the middle of a reply
    transformers.logging.disable_progress_bar()
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass

    # ---- the template and the system message, checked before any weights are read
    tokenizer = load_tokenizer(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    if args.chat_template:
        template = set_chat_template(tokenizer, args.chat_template)
        stops, template_name = template.stop_strings, template.name
    elif isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        stops = infer_stop_strings(tokenizer.chat_template)
        template_name = shipped_name(tokenizer.chat_template) or "the checkpoint's own"
    else:
        raise ValueError(f"'{args.model}' has no chat template: give --chat_template (a shipped name such as chatml, "
                         "a .jinja/.json file or a jinja string)")
    try:
        session = ChatSession(tokenizer, args.max_new_tokens, system=args.system)
    except ValueError as err:
        raise ValueError(f"--system: {err}") from None

    # ---- the model, stopping at the template's end of turn
    device = pick_device(args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, dtype=pick_dtype(args.dtype, device),
                                                 trust_remote_code=args.trust_remote_code).to(device)
    set_stop_tokens(tokenizer, model, stops)
    session.max_context = context_limit(model.config, args.max_context)
    if session.max_context is not None and session.max_context <= args.max_new_tokens:
        raise ValueError(f"the model's context ({session.max_context} tokens) leaves no room for a prompt with "
                         f"max_new_tokens {args.max_new_tokens}: lower --max_new_tokens")

    # ---- the conversation
    decoding = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top_p {args.top_p}"
    context = f"{session.max_context} tokens" if session.max_context else "no known limit"
    write(f"chatting with {args.model} on {device} (template {template_name}, stops at {', '.join(stops) or 'eos'}; "
          f"{decoding}; context {context}, replies up to {args.max_new_tokens} tokens)\n"
          "/help lists the commands, /quit or Ctrl-D exits\n")
    if session.system:
        write(f"system: {session.system}\n")
    base = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens,
                          stop=list(stops), seed=args.seed)

    def reply(prompt_ids: list[int], user_text: str) -> str:
        return stream_reply(model, tokenizer, prompt_ids, session.sampling(base, user_text), write, stops)

    chat_loop(session, reply, input, write)


if __name__ == "__main__":
    main()
