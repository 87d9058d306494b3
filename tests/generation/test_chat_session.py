"""chatalign.generation.chat_session and scripts/chat.py: the conversation as the template renders it, the commands,
the context budget, streamed replies, and the real script driven through a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from conftest import REPO, load_script

from chatalign.generation.chat_session import (
    HELP,
    ChatSession,
    StopFilter,
    chat_loop,
    context_limit,
    pick_dtype,
    stream_reply,
    template_supports_system,
)
from chatalign.generation.local import generate_local
from chatalign.generation.params import SamplingParams, truncate_at_stop
from chatalign.store import read_jsonl

SYSTEM = {"role": "system", "content": "Be terse."}
NO_SYSTEM_RAISES = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                    "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                    "{{ 'assistant: ' }}{% endif %}")
NO_SYSTEM_DROPS = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
                   "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


def conversation_of(session: ChatSession):
    return [dict(m) for m in session.messages]


# --------------------------------------------------------------------------------------------------------------------
# The conversation and its commands


def test_multi_turn_prompt_is_the_chat_template_of_the_conversation(tok):
    session = ChatSession(tok, max_new_tokens=8, system="Be terse.")
    session.add_turn("hi", "hello there")
    messages = [SYSTEM, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                {"role": "user", "content": "more"}]
    expected = ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                "hello there<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n")
    assert session.render("more") == expected
    assert session.render("more") == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert session.prompt_ids("more") == tok(expected, add_special_tokens=False)["input_ids"]
    assert session.render() == tok.apply_chat_template(messages[:3], tokenize=False)  # the finished turns only


def test_system_command_sets_clears_and_says_when_the_template_has_no_system_role(tok):
    session = ChatSession(tok, max_new_tokens=8)
    assert session.command("/system   Be terse.  ") == ("system message set", False)
    assert session.messages == [SYSTEM]
    session.add_turn("hi", "yo")
    assert session.command("/system Be kind.")[0] == "system message set (it applies to the whole conversation)"
    assert session.render("again").startswith("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhi")
    assert session.command("/system") == ("system message cleared", False)
    assert session.messages[0]["role"] == "user"

    for template in (NO_SYSTEM_RAISES, NO_SYSTEM_DROPS):
        tok.chat_template = template
        assert not template_supports_system(tok)
        bare = ChatSession(tok, max_new_tokens=8)
        message, quit_now = bare.command("/system Be terse.")
        assert "no system role" in message and "--chat_template" in message and not quit_now
        assert bare.system is None and bare.messages == []
        with pytest.raises(ValueError, match="no system role"):
            ChatSession(tok, max_new_tokens=8, system="Be terse.")


def test_reset_keeps_the_system_message_and_save_writes_one_sft_row(tok, tmp_path):
    session = ChatSession(tok, max_new_tokens=8, system="Be terse.")
    target = tmp_path / "chats" / "one.json"
    assert session.command(f"/save {target}") == ("nothing to save yet: the conversation has no reply", False)
    assert not target.exists()
    assert session.command("/save") == ("usage: /save <file>", False)
    session.add_turn("hi", "hello there")
    session.add_turn("héllo", "again")
    assert session.command(f"/save {target}") == (f"saved 2 turn(s) to {target}", False)
    expected = {"messages": [SYSTEM, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "héllo"},
                             {"role": "assistant", "content": "again"}]}
    text = target.read_text(encoding="utf-8")
    assert text == json.dumps(expected, ensure_ascii=False) + "\n"  # one line: a JSON file and a one-row JSONL file
    assert json.loads(text) == expected and read_jsonl(target) == [expected]
    assert [p.name for p in target.parent.iterdir()] == ["one.json"]  # no temporary file left beside it

    assert session.command("/reset") == ("new conversation (system message kept; /system alone clears it)", False)
    assert session.messages == [SYSTEM] and session.turns == []
    assert session.render("hi") == tok.apply_chat_template([SYSTEM, {"role": "user", "content": "hi"}],
                                                           tokenize=False, add_generation_prompt=True)
    session.add_turn("x", "y")
    blocked = tmp_path / "file"
    blocked.write_text("")
    message, _ = session.command(f"/save {blocked}/inside.json")  # the parent is a file
    assert message.startswith(f"not saved: cannot write '{blocked}/inside.json'")
    assert session.command("/help") == (HELP, False)
    assert session.command("/quit") == ("", True) and session.command("/exit") == ("", True)
    assert session.command("/frobnicate now") == ("unknown command /frobnicate; /help lists the commands", False)


class Script:
    """Lines to read (an exception instance is raised instead) and everything written."""

    def __init__(self, *lines):
        self.lines = list(lines)
        self.out = []

    def read(self, prompt):
        self.out.append(prompt)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    def write(self, text):
        self.out.append(text)

    @property
    def text(self):
        return "".join(self.out)


def test_a_message_that_would_overflow_the_context_is_refused_and_the_conversation_kept(tok):
    session = ChatSession(tok, max_new_tokens=5, system="Be terse.")
    calls = []

    def reply(ids, text):
        calls.append((ids, text))
        return "hello there"

    # Room for either message with its 5 reply tokens in a new conversation, not for the second after the first.
    session.max_context = max(len(session.fresh_prompt("hi")), len(session.fresh_prompt("more"))) + 5
    term = Script("hi", "more", "/quit")
    chat_loop(session, reply, term.read, term.write)
    assert calls == [(session.fresh_prompt("hi"), "hi")]
    assert session.turns == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    more = len(session.prompt_ids("more"))
    assert term.text == (
        "user> assistant> \nuser> "
        f"context full: the prompt would be {more} tokens and the reply up to 5 more, over the context of "
        f"{session.max_context} tokens. The message was not sent. /save <file> keeps the conversation, /reset starts "
        "a new one (the system message stays).\nuser> ")

    # After /reset the same message fits; one too long for any conversation is told so.
    long = " ".join(["word"] * 40)
    term = Script("/reset", "more", long)
    chat_loop(session, reply, term.read, term.write)
    assert [text for _, text in calls] == ["hi", "more"]
    assert session.turns[0] == {"role": "user", "content": "more"}
    alone = len(session.fresh_prompt(long)) + 5
    assert alone > session.max_context
    assert (f"context full: the prompt would be {len(session.prompt_ids(long))} tokens and the reply up to 5 more, "
            f"over the context of {session.max_context} tokens. This message is too long even in a new conversation "
            f"({alone} tokens with the reply): send a shorter one (or lower --max_new_tokens).\n") in term.text


def test_chat_loop_interrupts_empty_replies_slashes_and_end_of_input(tok):
    session = ChatSession(tok, max_new_tokens=5)
    answers = iter([KeyboardInterrupt(), "", "kept"])

    def reply(ids, text):
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    term = Script(KeyboardInterrupt(), "  ", "one", "two", "//etc/hosts?")
    chat_loop(session, reply, term.read, term.write)
    assert term.text == ("user> \n(/quit or Ctrl-D to exit)\nuser> user> assistant> \n"
                         "[interrupted: this turn is not kept]\nuser> assistant> \n"
                         "[the reply is empty: this turn is not kept]\nuser> assistant> \nuser> \n")
    assert session.turns == [{"role": "user", "content": "/etc/hosts?"}, {"role": "assistant", "content": "kept"}]


# --------------------------------------------------------------------------------------------------------------------
# Streaming


def test_stop_filter_shows_what_local_generation_returns_chunk_by_chunk():
    specials = ["<|im_end|>", "<|im_start|>", "<s>"]
    stops = ["<|im_end|>", "</s>"]

    def local_text(text):  # what chatalign.generation.local does with the decoded tokens
        text = truncate_at_stop(text, stops)
        for token in specials:
            text = text.replace(token, "")
        return text.strip()

    texts = ["\n Paris <s>is big.  <|im_end|>\n<|im_start|>user\nmore", "a</s>b", "  \n", "no stop, tail <|im",
             "x </ s> y", "<s>\n\nA  B\n\n"]
    for text in texts:
        for size in (1, 2, 3, 7, 100):
            chunks = [text[i:i + size] for i in range(0, len(text), size)]
            filtered = StopFilter(stops, specials)
            shown = [filtered.feed(chunk) for chunk in chunks] + [filtered.flush()]
            assert "".join(shown) == filtered.text == local_text(text), (text, size)
    filtered = StopFilter(stops, specials)
    assert [filtered.feed(c) for c in ["Hi ", "<|im", "_e", "nd|> late", "r"]] == ["Hi", "", "", "", ""]
    assert filtered.stopped and filtered.flush() == "" and filtered.text == "Hi"
    filtered = StopFilter(stops, specials)
    assert [filtered.feed(c) for c in ["a <|im", "_start|>b", "  "]] + [filtered.flush()] == ["a", " b", "", ""]


@pytest.fixture(scope="module")
def tiny_chat(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from chatalign.data.tokenizers import load_tokenizer, set_stop_tokens

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    set_stop_tokens(tokenizer, model, ["<|im_end|>"])
    return tokenizer, model


def greedy(tiny_chat, messages, max_tokens=12):
    tokenizer, model = tiny_chat
    return generate_local(model, tokenizer, [messages], SamplingParams(max_tokens=max_tokens, stop=["<|im_end|>"]),
                          progress=False)[0][0]


def test_streamed_reply_is_greedy_generation_shown_as_it_comes(tiny_chat):
    tokenizer, model = tiny_chat
    session = ChatSession(tokenizer, max_new_tokens=12, system="Be terse.")
    chunks = []
    params = session.sampling(SamplingParams(temperature=0.0), "hello")
    reply = stream_reply(model, tokenizer, session.prompt_ids("hello"), params, chunks.append, ["<|im_end|>"])
    assert reply == "".join(chunks) == greedy(tiny_chat, session.with_user("hello"))
    assert reply and len([c for c in chunks if c]) > 1  # several pieces, not one at the end

    # Sampling: the seed comes from the run's seed and the conversation, so a replay draws the same reply.
    base = SamplingParams(temperature=1.0, top_p=0.9, seed=3)
    draws = [stream_reply(model, tokenizer, session.prompt_ids("hello"), session.sampling(base, "hello"),
                          lambda _: None, ["<|im_end|>"]) for _ in range(2)]
    assert draws[0] == draws[1] and draws[0] != reply
    assert session.sampling(base, "hello").seed != session.sampling(base, "hi").seed
    assert session.sampling(base, "hello").max_tokens == 12

    # Ctrl-C while the reply streams: generation stops, its thread is joined, the interrupt goes on to the loop.
    shown = []

    def interrupt_on_second_piece(text):
        shown.append(text)
        if len(shown) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_reply(model, tokenizer, session.prompt_ids("hello"), SamplingParams(max_tokens=500),
                     interrupt_on_second_piece, ["<|im_end|>"])
    assert len(shown) == 2 and not [t for t in threading.enumerate() if t.name == "chat-generate"]


def test_context_limit_and_dtype_defaults(tiny_chat):
    import torch

    _, model = tiny_chat
    assert context_limit(model.config, None) == 2048 and context_limit(model.config, 64) == 64
    assert pick_dtype("auto", "cpu") is torch.float32 and pick_dtype("auto", "cuda") == "auto"
    assert pick_dtype("bfloat16", "cuda") is torch.bfloat16


def test_script_checks_arguments_and_the_system_role_before_loading_weights(tiny_tokenizer_dir):
    chat = load_script("chat")
    with pytest.raises(ValueError, match=r"max_context \(8\) must be larger than max_new_tokens \(8\)"):
        chat.main(["--model", "x", "--max_context", "8", "--max_new_tokens", "8"])
    with pytest.raises(ValueError, match="give the checkpoint"):
        chat.main([])
    # A folder with a tokenizer and no weights: the error must come from the template check, before the model.
    with pytest.raises(ValueError, match="--system: this chat template has no system role"):
        chat.main(["--model", str(tiny_tokenizer_dir), "--chat_template", NO_SYSTEM_RAISES, "--system", "Be terse."])


# --------------------------------------------------------------------------------------------------------------------
# The real script in a pseudo-terminal


def controlling_terminal():
    """In the child: a session of its own whose controlling terminal is the pty, so Ctrl-C and Ctrl-D reach it as
    they do in a real terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """scripts/chat.py on a pseudo-terminal, 1000 columns wide (readline scrolls long lines on a narrow one) and with
    output processing off, so bytes arrive as written. A context manager: the script is killed if still running."""

    def __init__(self, *args: str):
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
        env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "chat.py"), *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, cwd=REPO, close_fds=True,
                                     preexec_fn=controlling_terminal)
        os.close(slave)
        self.master, self.buffer = master, b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def read_until(self, marker: str, timeout: float = 120) -> str:
        """Everything up to and including `marker` (which is consumed)."""
        wanted, end = marker.encode(), time.monotonic() + timeout
        while wanted not in self.buffer:
            ready, _, _ = select.select([self.master], [], [], max(0.0, end - time.monotonic()))
            data = b""
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    pass
            if not data:
                raise AssertionError(f"no {marker!r} from chat.py; it wrote: {self.buffer.decode(errors='replace')}")
            self.buffer += data
        cut = self.buffer.index(wanted) + len(wanted)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out.decode("utf-8")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def exchange(self, line: str) -> str:
        """Send a line; what the script writes back before its next prompt (after the echo of the line)."""
        self.send(line + "\n")
        echo, _, out = self.read_until("user> ").partition("\n")
        assert echo == line, echo
        return out[:-len("user> ")]

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)


def test_chat_script_in_a_terminal(tiny_chat, tiny_model_dir, tmp_path):
    saved = tmp_path / "chat.json"
    with Terminal("--model", str(tiny_model_dir), "--temperature", "0", "--max_new_tokens", "12") as term:
        banner = term.read_until("user> ")
        assert "template the checkpoint's own, stops at <|im_end|>; greedy; context 2048 tokens" in banner
        # CPython's readline prints the prompt before it waits for input, and a SIGINT landing in between is only
        # seen at the next key (under load: 4 of 15 runs here); a person is never that fast, so wait as one would.
        time.sleep(1.0)
        term.send("\x03")  # Ctrl-C at the prompt: a hint, not an exit
        assert term.read_until("user> ") == "\n(/quit or Ctrl-D to exit)\nuser> "
        assert term.exchange("/system Be terse.") == "system message set\n"
        first = term.exchange("hello")
        hello = [SYSTEM, {"role": "user", "content": "hello"}]
        r1 = greedy(tiny_chat, hello)
        assert first == f"assistant> {r1}\n"
        second = term.exchange("and again")
        context = hello + [{"role": "assistant", "content": r1}, {"role": "user", "content": "and again"}]
        r2 = greedy(tiny_chat, context)
        assert second == f"assistant> {r2}\n"  # the second prompt holds the first turn...
        assert r2 != greedy(tiny_chat, [SYSTEM, {"role": "user", "content": "and again"}])  # ...which matters
        assert term.exchange(f"/save {saved}") == f"saved 2 turn(s) to {saved}\n"
        assert term.exchange("/reset") == "new conversation (system message kept; /system alone clears it)\n"
        assert term.exchange("hello") == f"assistant> {r1}\n"  # a new conversation: the same prompt as the first
        term.send("/quit\n")
        assert term.wait() == 0
    assert json.loads(saved.read_text(encoding="utf-8")) == {
        "messages": context + [{"role": "assistant", "content": r2}]}


@pytest.mark.slow
def test_chat_script_with_smollm2(smollm2_dir):
    with Terminal("--model", str(smollm2_dir), "--temperature", "0", "--max_new_tokens", "48") as term:
        term.read_until("user> ", timeout=300)
        answer = term.exchange("What is the capital of France? Answer in one sentence.")
        assert answer.startswith("assistant> ") and answer.endswith("\n")
        text = answer[len("assistant> "):].strip()
        assert text and "<|im_end|>" not in text and "<|im_start|>" not in text
        term.send("\x04")  # Ctrl-D at the prompt exits
        assert term.wait() == 0
        assert term.read_until("\n") == "\n"
