"""An interactive chat with a checkpoint: the conversation, its commands, the context budget and streamed replies.

scripts/chat.py is the terminal around it. The conversation is the checkpoint's chat template applied to the system
message (if any) and every finished turn, exactly as ``tokenizer.apply_chat_template`` renders it, so each reply sees
the whole conversation. Choices made here:

* ``/reset`` starts a new conversation and keeps the system prompt (``/system`` with no text clears it).
* ``/system <text>`` replaces the system message of the whole conversation, from its first turn on. A template that
  rejects a system message, or renders without it, has no system role: ``/system`` says so and changes nothing.
* A message whose prompt plus ``max_new_tokens`` would not fit in ``max_context`` is refused, never truncated: the
  conversation stays as it was and the notice says to ``/save`` and ``/reset`` (or that the message alone is too long).
  Dropping old turns silently would change what the model answers to without the user seeing it.
* A reply is cut at the template's stop strings and special tokens are dropped, as chatalign.generation.local does,
  while it streams; a reply interrupted with Ctrl-C, or one that is empty, is not kept.
* ``/save <file>`` writes the conversation as one chatalign sft row, ``{"messages": [...]}`` on one line: a JSON file
  and a one-row JSONL file at once, which chatalign.data.mixer.mix_datasets reads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from chatalign.data.schemas import validate_row
from chatalign.generation.local import encode_prompts
from chatalign.generation.params import SamplingParams, item_seed
from chatalign.store import prompt_id, write_text

HELP = """commands:
  /system <text>  set the system message (for the whole conversation); /system alone clears it
  /reset          start a new conversation (the system message is kept)
  /save <file>    write the conversation as JSON, chatalign's sft row {"messages": [...]}
  /help           this list
  /quit           exit (or Ctrl-D); Ctrl-C stops a reply while it streams
A message starting with "/" is sent as a message when it starts with "//" (one slash is dropped)."""

SYSTEM_PROBE = "chatalign-system-probe-3f9c"


def template_supports_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (one that raises or drops it does not)."""
    messages = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "hello"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja's raise_exception (TemplateError) or a template that cannot take the role at all
        return False
    return SYSTEM_PROBE in text


def special_texts(tokenizer) -> list[str]:
    """What skip_special_tokens would drop: the special map plus every added token flagged special, longest first."""
    found = {t for t in tokenizer.all_special_tokens if t}
    found |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return sorted(found, key=len, reverse=True)


class StopFilter:
    """Streamed text in, the text to show out: cut at the first stop string, special tokens dropped, leading and
    trailing whitespace left out. A tail that may still grow into a stop string or a special token is held back until
    the next chunk tells, and whitespace until text follows it. Everything it lets through is the text
    chatalign.generation.local returns for the same tokens (truncate_at_stop, specials stripped, then strip)."""

    def __init__(self, stops: list[str], specials: list[str]):
        self.stops = [s for s in stops if s]
        self.specials = sorted((s for s in specials if s), key=len, reverse=True)
        self.pending = ""
        self.shown = ""
        self.spaces = ""  # whitespace shown only once text follows it
        self.stopped = False

    def feed(self, chunk: str) -> str:
        if self.stopped:
            return ""
        self.pending += chunk
        cuts = [pos for pos in (self.pending.find(s) for s in self.stops) if pos != -1]
        if cuts:
            ready, self.pending, self.stopped = self.pending[:min(cuts)], "", True
            return self._show(ready)
        hold = self._undecided_tail()
        ready, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return self._show(ready)

    def flush(self) -> str:
        """The end of the stream: a held tail that never became a stop string is text after all."""
        ready, self.pending = self.pending, ""
        return self._show(ready)

    @property
    def text(self) -> str:
        return self.shown

    def _undecided_tail(self) -> int:
        markers = self.stops + self.specials
        longest = min(len(self.pending), max((len(m) for m in markers), default=1) - 1)
        for size in range(longest, 0, -1):
            tail = self.pending[-size:]
            if any(m.startswith(tail) and m != tail for m in markers):
                return size
        return 0

    def _show(self, text: str) -> str:
        for token in self.specials:
            text = text.replace(token, "")
        body = text.rstrip()
        if not body:
            self.spaces += text if self.shown else ""
            return ""
        text, self.spaces = (self.spaces if self.shown else "") + body, text[len(body):]
        text = text if self.shown else text.lstrip()
        self.shown += text
        return text


def stream_reply(model, tokenizer, prompt_ids: list[int], params: SamplingParams, write: Callable[[str], object],
                 stops: list[str]) -> str:
    """Generate a reply to `prompt_ids` in a thread, writing its text as it comes; returns the reply (stripped).

    Greedy when params.temperature is 0, else transformers' sampling (temperature, top_p, no top-k) after seeding
    torch with params.seed. Generation ends at the model's eos ids (chatalign.data.tokenizers.set_stop_tokens adds the
    template's end-of-turn tokens to them) or, for a stop string that is not one token, as soon as the text reaches
    it. Ctrl-C (KeyboardInterrupt) stops the generation and is raised again once its thread has finished.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    stop_now = threading.Event()

    class StopWhenTold(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop_now.is_set(), dtype=torch.bool, device=input_ids.device)

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens,
                  streamer=streamer, stopping_criteria=StoppingCriteriaList([StopWhenTold()]), pad_token_id=pad_id)
    if params.temperature > 0:
        torch.manual_seed(params.seed)
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as err:  # handed to the main thread below
            errors.append(err)
            streamer.end()

    model.eval()
    thread = threading.Thread(target=work, name="chat-generate", daemon=True)
    filtered = StopFilter(stops, special_texts(tokenizer))
    thread.start()
    try:
        for chunk in streamer:
            write(filtered.feed(chunk))
            if filtered.stopped:
                stop_now.set()
        write(filtered.flush())
    finally:
        stop_now.set()
        thread.join()
    if errors:
        raise errors[0]
    return filtered.text


def pick_device(name: str) -> str:
    """"auto": cuda, else mps, else cpu; any other name as given (cuda:1, cpu, ...)."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def pick_dtype(name: str, device: str):
    """"auto": the checkpoint's own dtype on an accelerator, float32 on cpu (half precision is slow there);
    else the torch dtype of that name (float32, bfloat16, float16)."""
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype: unknown dtype {name!r} (auto, float32, bfloat16, float16)")
    return dtype


def context_limit(model_config, max_context: int | None) -> int | None:
    """`max_context` if given, else the model's max_position_embeddings (None: no known limit)."""
    if max_context is not None:
        return max_context
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return getattr(config, "max_position_embeddings", None)


class ChatSession:
    """The conversation so far and what the commands do to it; no model in here, only the tokenizer's template."""

    def __init__(self, tokenizer, max_new_tokens: int, max_context: int | None = None, system: str | None = None):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_context = max_context
        self.supports_system = template_supports_system(tokenizer)
        if system and not self.supports_system:
            raise ValueError(self.no_system_message())
        self.system = system or None
        self.turns: list[dict] = []

    # ---- the conversation

    @property
    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    def with_user(self, text: str) -> list[dict]:
        return self.messages + [{"role": "user", "content": text}]

    def render(self, user_text: str | None = None) -> str:
        """The prompt string: the template on the conversation (plus `user_text` and the generation prompt)."""
        messages = self.messages if user_text is None else self.with_user(user_text)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=user_text is not None)

    def prompt_ids(self, user_text: str) -> list[int]:
        """The token ids the model continues from for the next message (no second bos: see encode_prompts)."""
        return encode_prompts(self.tokenizer, [self.with_user(user_text)])[0]

    def sampling(self, base: SamplingParams, user_text: str) -> SamplingParams:
        """`base` with this reply's seed: the run's seed hashed with the conversation, so the same conversation in
        the same run gets the same reply."""
        return SamplingParams(n=1, temperature=base.temperature, top_p=base.top_p, max_tokens=self.max_new_tokens,
                              stop=list(base.stop), seed=item_seed(base.seed, prompt_id(self.with_user(user_text))))

    def add_turn(self, user_text: str, reply: str) -> None:
        self.turns += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]

    def over_budget(self, user_text: str, prompt_ids: list[int]) -> str | None:
        """None when the prompt plus max_new_tokens fits max_context, else the notice that refuses the message."""
        if self.max_context is None or len(prompt_ids) + self.max_new_tokens <= self.max_context:
            return None
        head = (f"context full: the prompt would be {len(prompt_ids)} tokens and the reply up to "
                f"{self.max_new_tokens} more, over the context of {self.max_context} tokens.")
        alone = len(self.fresh_prompt(user_text)) + self.max_new_tokens
        if not self.turns or alone > self.max_context:
            return (f"{head} This message is too long even in a new conversation ({alone} tokens with the reply): "
                    "send a shorter one (or lower --max_new_tokens).")
        return (f"{head} The message was not sent. /save <file> keeps the conversation, /reset starts a new one "
                "(the system message stays).")

    def fresh_prompt(self, user_text: str) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return encode_prompts(self.tokenizer, [head + [{"role": "user", "content": user_text}]])[0]

    # ---- commands

    def no_system_message(self) -> str:
        return ("this chat template has no system role (it rejects a system message or renders without it); "
                "use --chat_template with a template that has one to set a system message")

    def set_system(self, text: str) -> str:
        if not self.supports_system:
            return self.no_system_message()
        if not text:
            self.system = None
            return "system message cleared"
        self.system = text
        return "system message set" + (" (it applies to the whole conversation)" if self.turns else "")

    def reset(self) -> str:
        self.turns = []
        return "new conversation" + (" (system message kept; /system alone clears it)" if self.system else "")

    def save(self, path: str) -> str:
        if not path:
            return "usage: /save <file>"
        if not self.turns:
            return "nothing to save yet: the conversation has no reply"
        row = {"messages": self.messages}
        problem = validate_row(row, "sft")
        if problem is not None:
            return f"not saved: the conversation is not a valid sft row ({problem})"
        target = Path(path).expanduser()
        try:
            write_text(target, json.dumps(row, ensure_ascii=False) + "\n")
        except OSError as err:
            return f"not saved: cannot write '{target}': {err.strerror or err}"
        return f"saved {len(self.turns) // 2} turn(s) to {target}"

    def command(self, line: str) -> tuple[str, bool]:
        """Run a /command line; returns (what to print, whether to quit)."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return "", True
        if name == "/help":
            return HELP, False
        if name == "/reset":
            return self.reset(), False
        if name == "/system":
            return self.set_system(rest), False
        if name == "/save":
            return self.save(rest), False
        return f"unknown command {name}; /help lists the commands", False


def chat_loop(session: ChatSession, reply: Callable[[list[int], str], str], read_line: Callable[[str], str],
              write: Callable[[str], object], user_prompt: str = "user> ", assistant_prompt: str = "assistant> ") -> None:
    """Read lines until /quit or end of input (Ctrl-D); a command runs, a message gets a streamed reply.

    `reply(prompt_ids, user_text)` streams the reply through `write` and returns its text.
    """
    while True:
        try:
            line = read_line(user_prompt)
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(/quit or Ctrl-D to exit)\n")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/") and not line.startswith("//"):
            message, quit_now = session.command(line)
            if message:
                write(message + "\n")
            if quit_now:
                return
            continue
        text = line[1:] if line.startswith("//") else line
        ids = session.prompt_ids(text)
        refusal = session.over_budget(text, ids)
        if refusal:
            write(refusal + "\n")
            continue
        write(assistant_prompt)
        try:
            answer = reply(ids, text)
        except KeyboardInterrupt:
            write("\n[interrupted: this turn is not kept]\n")
            continue
        write("\n")
        if not answer:
            write("[the reply is empty: this turn is not kept]\n")
            continue
        session.add_turn(text, answer)
