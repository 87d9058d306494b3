"""chatalign.generation and chatalign.servers.

The HTTP path runs against two real `transformers serve` processes on 127.0.0.1 serving the tiny model, launched once
for the module by chatalign.servers.serve (which also stops them). Retries are tested against a small stub server
(http.server on loopback) because a real server cannot be made to answer 429 on demand. The vLLM offline path runs
against a fake `vllm` module: vLLM is not installed here.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chatalign.chat_templates import resolve_chat_template, strip_generation_tags
from chatalign.generation import (
    ChatClient,
    ChatRequestError,
    EndpointError,
    GenerationArguments,
    ResumableJsonl,
    SamplingParams,
    client_from_args,
    generate,
    generate_local,
    item_seed,
    sample_seed,
)
from chatalign.servers import (
    LocalServer,
    ServerStartError,
    build_servers,
    checkpoint_with_chat_template,
    free_port,
    free_ports,
    select_engine,
    serve,
    sglang_command,
    transformers_serve_command,
    vllm_command,
)

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give a synonym for happy.",
    "Why is the sky blue?",
]


def make_items(count: int) -> list[dict]:
    return [{"id": f"q{i}", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}],
             "source": "test"} for i in range(count)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------------
# Real transformers serve servers (module scope)


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    """Two `transformers serve` processes for the tiny model, started together by serve() and stopped after."""
    args = GenerationArguments(backend="server", engine="transformers", server_ports=free_ports(2),
                               server_start_timeout=180)
    with serve(str(tiny_model_dir), args) as endpoints:
        yield endpoints


def http_args(ports, **overrides) -> GenerationArguments:
    values = dict(backend="openai", engine="transformers", server_ports=list(ports), gen_parallel=2,
                  request_timeout=60, max_retries=2, retry_backoff=0.05)
    values.update(overrides)
    return GenerationArguments(**values)


def ensure_running(server: LocalServer) -> None:
    if not server.healthy():
        server.restart(timeout=180)


def test_serve_launches_transformers_serve_with_the_built_command(live, tiny_model_dir):
    assert live.engine == "transformers" and len(live) == 2
    assert live.model == str(tiny_model_dir)
    for url, server in zip(live, live.servers, strict=True):
        assert url == f"http://127.0.0.1:{server.port}/v1"
        assert server.command == transformers_serve_command(str(tiny_model_dir), server.port, seed=0)
        assert server.healthy()
        assert server.log_path.is_file()  # the server's output goes to its log, not the console
    assert "Uvicorn running" in live.servers[0].log_tail()


def test_http_backend_returns_n_completions_per_item_and_writes_jsonl(live, tmp_path, tiny_model_dir):
    items = make_items(3)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=7)
    # One request at a time: transformers serve reseeds one global RNG per request, so only then is it reproducible.
    args = http_args([live.servers[0].port], gen_parallel=1)
    out = tmp_path / "gen.jsonl"
    rows = generate(str(tiny_model_dir), items, params, args, out, progress=False)

    assert [row["id"] for row in rows] == [item["id"] for item in items]
    assert all(len(row["completions"]) == 3 for row in rows)
    assert all(all(isinstance(c, str) and c for c in row["completions"]) for row in rows)
    # Sampling really happened (three different samples) and the item's own fields are kept.
    assert any(len(set(row["completions"])) > 1 for row in rows)
    assert rows[0]["source"] == "test" and rows[0]["messages"] == items[0]["messages"]
    assert rows[0]["generator"] == {"model": str(tiny_model_dir), "backend": "openai",
                                    "params": {"n": 3, "temperature": 1.0, "top_p": 1.0, "max_tokens": 6,
                                               "stop": [], "seed": 7}}
    assert read_jsonl(out) == rows
    # The same items into a new file, in another order: the per-item seeds give the same samples.
    again = generate(str(tiny_model_dir), items[::-1][:2], params, args, tmp_path / "again.jsonl", progress=False)
    assert again == rows[::-1][:2]


def test_server_renders_with_the_checkpoints_chat_template(live, tmp_path, tiny_model_dir):
    """Greedy completions over HTTP equal in-process ones rendered with the checkpoint's own template."""
    from transformers import AutoModelForCausalLM

    from chatalign.model_utils import load_tokenizer

    items = make_items(3)
    params = SamplingParams(max_tokens=10)
    rows = generate(str(tiny_model_dir), items, params, http_args([live.servers[0].port]), tmp_path / "http.jsonl",
                    progress=False)
    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    local = generate_local(model, tokenizer, [item["messages"] for item in items], params, progress=False)
    assert [row["completions"] for row in rows] == local


def test_requests_are_balanced_round_robin_over_two_endpoints(live, tmp_path, tiny_model_dir, monkeypatch):
    sent: list[str] = []
    lock = threading.Lock()
    original = ChatClient._send

    def counting_send(self, url, body):
        with lock:
            sent.append(url)
        return original(self, url, body)

    monkeypatch.setattr(ChatClient, "_send", counting_send)
    args = http_args([s.port for s in live.servers], gen_parallel=2)
    rows = generate(str(tiny_model_dir), make_items(8), SamplingParams(max_tokens=6), args, tmp_path / "lb.jsonl",
                    progress=False)
    assert len(rows) == 8 and all(len(row["completions"]) == 1 for row in rows)
    assert {url: sent.count(url) for url in set(sent)} == {live[0]: 4, live[1]: 4}


def test_in_flight_requests_never_exceed_gen_parallel(live, tmp_path, tiny_model_dir, monkeypatch):
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    original = ChatClient._send

    def watching_send(self, url, body):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            time.sleep(0.05)  # keep requests overlapping so that the bound, not luck, limits the peak
            return original(self, url, body)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(ChatClient, "_send", watching_send)
    args = http_args([s.port for s in live.servers], gen_parallel=3)
    rows = generate(str(tiny_model_dir), make_items(9), SamplingParams(max_tokens=2), args, tmp_path / "p.jsonl",
                    progress=False)
    assert len(rows) == 9
    assert peak == 3


def test_interrupted_then_resumed_run_equals_clean_run(live, tmp_path, tiny_model_dir, monkeypatch):
    """Sampling with n=2: the resumed run asks for exactly the seeds the clean run did."""
    items = make_items(4)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=6, seed=3)
    args = http_args([live.servers[0].port], gen_parallel=1)
    clean = generate(str(tiny_model_dir), items, params, args, tmp_path / "clean.jsonl", progress=False)

    original = ChatClient._send
    calls = 0

    def crashing_send(self, url, body):
        nonlocal calls
        calls += 1
        if calls == 5:  # n=2 on transformers serve is two requests per item: items q0, q1 are done
            raise RuntimeError("simulated crash")
        return original(self, url, body)

    out = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(ChatClient, "_send", crashing_send)
    with pytest.raises(ChatRequestError, match="simulated crash"):
        generate(str(tiny_model_dir), items, params, args, out, progress=False)
    assert [row["id"] for row in read_jsonl(out)] == ["q0", "q1"]

    monkeypatch.setattr(ChatClient, "_send", original)
    resumed = generate(str(tiny_model_dir), items, params, args, out, progress=False)
    assert resumed == clean
    assert sorted(row["id"] for row in read_jsonl(out)) == sorted(item["id"] for item in items)  # nothing twice


def test_server_dying_mid_run_names_the_endpoint_and_rerun_resumes(live, tmp_path, tiny_model_dir, monkeypatch):
    items = make_items(6)
    params = SamplingParams(max_tokens=6)
    victim = live.servers[1]
    ensure_running(victim)
    clean = generate(str(tiny_model_dir), items, params, http_args([live.servers[0].port]), tmp_path / "clean.jsonl",
                     progress=False)

    original = ChatClient._send
    done = 0

    def send_then_crash(self, url, body):
        nonlocal done
        result = original(self, url, body)
        done += 1
        if done == 3:
            victim.kill()  # SIGKILL, as a crash or an OOM kill would
        return result

    out = tmp_path / "run.jsonl"
    args = http_args([victim.port], gen_parallel=1)
    monkeypatch.setattr(ChatClient, "_send", send_then_crash)
    try:
        started = time.monotonic()
        with pytest.raises(EndpointError) as caught:
            generate(str(tiny_model_dir), items, params, args, out, progress=False)
        assert time.monotonic() - started < 30
        assert victim.url in str(caught.value) and "connection failed" in str(caught.value)
        assert [row["id"] for row in read_jsonl(out)] == ["q0", "q1", "q2"]
    finally:
        monkeypatch.setattr(ChatClient, "_send", original)
        victim.restart(timeout=180)

    resumed = generate(str(tiny_model_dir), items, params, args, out, progress=False)
    assert resumed == clean
    assert len(read_jsonl(out)) == len(items)


# --------------------------------------------------------------------------------------------------------------------
# A stub OpenAI-compatible server for retries, n and stop handling


class Stub:
    """An OpenAI-compatible stub on 127.0.0.1: `script` is a list of (status, delay_s) for successive chat requests
    (then 200 at once). Every choice's content is "seed=<seed> n=<i>" unless `content` is set."""

    def __init__(self, script=(), content=None, honour_n=True, reject_n=False):
        self.script = list(script)
        self.content = content
        self.honour_n = honour_n
        self.reject_n = reject_n
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.times.append(time.monotonic())
                    status, delay = stub.script.pop(0) if stub.script else (200, 0.0)
                if delay:
                    time.sleep(delay)
                if status != 200:
                    self._reply(status, {"error": {"message": f"stub says {status}", "type": "stub"}})
                    return
                n = body.get("n", 1)
                if n > 1 and stub.reject_n:
                    self._reply(400, {"error": {"message": "n > 1 is not supported", "type": "invalid_request"}})
                    return
                count = n if stub.honour_n else 1
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant",
                                        "content": stub.content or f"seed={body.get('seed')} n={i}"}}
                           for i in range(count)]
                self._reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": choices})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_429_and_5xx_with_backoff(status):
    with Stub(script=[(status, 0), (status, 0)]) as stub:
        client = ChatClient([stub.url], "stub", parallel=2, timeout=5, max_retries=3, backoff=0.2)
        assert client.chat(HELLO, SamplingParams(seed=5)) == ["seed=5 n=0"]
    assert len(stub.requests) == 3
    waits = [b - a for a, b in zip(stub.times, stub.times[1:], strict=False)]
    assert waits[0] >= 0.2 and waits[1] >= 0.4  # backoff doubles


def test_retries_a_timed_out_request():
    with Stub(script=[(200, 2.0)]) as stub:
        client = ChatClient([stub.url], "stub", timeout=0.5, max_retries=2, backoff=0.05)
        started = time.monotonic()
        assert client.chat(HELLO, SamplingParams(seed=1)) == ["seed=1 n=0"]
        assert time.monotonic() - started < 1.9  # the slow answer was not waited for
    assert len(stub.requests) == 2


def test_gives_up_after_max_retries_naming_the_endpoint():
    with Stub(script=[(503, 0)] * 10) as stub:
        client = ChatClient([stub.url], "stub", timeout=5, max_retries=2, backoff=0.01)
        with pytest.raises(EndpointError) as caught:
            client.chat(HELLO, SamplingParams())
    assert len(stub.requests) == 3
    assert stub.url in str(caught.value) and "HTTP 503" in str(caught.value)
    assert caught.value.url == stub.url


def test_client_errors_are_not_retried():
    with Stub(script=[(404, 0)]) as stub:
        client = ChatClient([stub.url], "stub", timeout=5, max_retries=3, backoff=0.01)
        with pytest.raises(ChatRequestError, match="HTTP 404") as caught:
            client.chat(HELLO, SamplingParams())
    assert len(stub.requests) == 1 and caught.value.status == 404 and stub.url in str(caught.value)


def test_retry_goes_to_the_other_endpoint():
    with Stub(script=[(503, 0)]) as bad, Stub() as good:
        client = ChatClient([bad.url, good.url], "stub", timeout=5, max_retries=1, backoff=0.01)
        assert client.chat(HELLO, SamplingParams(seed=2)) == ["seed=2 n=0"]
    assert len(bad.requests) == 1 and len(good.requests) == 1


def test_n_is_sent_in_one_request_when_the_server_supports_it():
    with Stub() as stub:
        client = ChatClient([stub.url], "stub", timeout=5)
        assert client.chat(HELLO, SamplingParams(n=3, seed=9)) == ["seed=9 n=0", "seed=9 n=1", "seed=9 n=2"]
    assert len(stub.requests) == 1 and stub.requests[0]["n"] == 3


@pytest.mark.parametrize("kind", ["ignores_n", "rejects_n"])
def test_n_falls_back_to_one_request_per_sample(kind):
    with Stub(honour_n=kind != "ignores_n", reject_n=kind == "rejects_n") as stub:
        client = ChatClient([stub.url], "stub", timeout=5, max_retries=0)
        params = SamplingParams(n=3, seed=100)
        expected = [f"seed={sample_seed(100, j)} n=0" for j in range(3)]
        assert client.chat(HELLO, params) == expected
        first = len(stub.requests)
        assert stub.requests[0]["n"] == 3 and first == (3 if kind == "ignores_n" else 4)
        # Once known, n is no longer asked for: one request per sample, same seeds, same answers.
        assert client.chat(HELLO, params) == expected
    later = stub.requests[first:]
    assert len(later) == 3 and all("n" not in body for body in later)
    assert [body["seed"] for body in later] == [100, 101, 102]


def test_request_fields_stop_strings_and_api_key(tmp_path, monkeypatch, caplog):
    """generate() over HTTP: stop strings of gen_chat_template are sent and applied; the key from the environment is
    sent as a bearer token and appears in no log line and no output."""
    secret = "sk-test-not-a-real-key-123"
    monkeypatch.setenv("CHATALIGN_TEST_KEY", secret)
    caplog.set_level("DEBUG")
    with Stub(script=[(429, 0)], content="  hello there<|im_end|>leftover") as stub:
        args = GenerationArguments(backend="openai", base_url=stub.url, api_key_env="CHATALIGN_TEST_KEY",
                                   served_model_name="my-model", gen_chat_template="chatml", max_retries=2,
                                   retry_backoff=0.01, request_timeout=5)
        out = tmp_path / "stub.jsonl"
        rows = generate("models/x", make_items(2), SamplingParams(max_tokens=5, temperature=0.5, top_p=0.8, seed=4),
                        args, out, progress=False)
    assert [row["completions"] for row in rows] == [["hello there"], ["hello there"]]
    body = stub.requests[-1]
    assert body["model"] == "my-model" and body["stop"] == ["<|im_end|>"]
    assert body["max_tokens"] == 5 and body["temperature"] == 0.5 and body["top_p"] == 0.8
    assert "generation_config" not in body  # only for transformers serve (engine=transformers)
    assert {item_seed(4, "q0"), item_seed(4, "q1")} == {b["seed"] for b in stub.requests[1:]}
    assert all(h.get("authorization") == f"Bearer {secret}" for h in stub.headers)
    assert "429" in caplog.text  # the retry was logged...
    assert secret not in caplog.text and secret not in out.read_text()  # ...without the key


def test_engine_transformers_turns_sampling_on_for_transformers_serve():
    with Stub() as stub:
        client = client_from_args(GenerationArguments(base_url=stub.url, engine="transformers"), "m")
        client.chat(HELLO, SamplingParams(temperature=1.0))
    assert json.loads(stub.requests[0]["generation_config"]) == {"do_sample": True, "top_k": 0}


def test_client_from_args_endpoints():
    args = GenerationArguments(base_url="http://127.0.0.1:9/v1, http://127.0.0.1:10/v1/", server_ports=["60001,60002"],
                               gen_parallel=5, request_timeout=7, max_retries=1)
    client = client_from_args(args, "models/sft")
    assert client.base_urls == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1", "http://127.0.0.1:60001/v1",
                                "http://127.0.0.1:60002/v1"]
    assert (client.model, client.parallel, client.timeout, client.max_retries) == ("models/sft", 5, 7.0, 1)
    with pytest.raises(ValueError, match="base_url or server_ports"):
        client_from_args(GenerationArguments(backend="openai"), "m")


def test_unreachable_endpoint_fails_clearly_within_the_timeout(tmp_path):
    port = free_port()  # nothing listens there
    args = GenerationArguments(backend="openai", server_ports=[port], request_timeout=3, max_retries=5)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}/v1 is not reachable"):
        generate("m", make_items(2), SamplingParams(), args, tmp_path / "x.jsonl", progress=False)
    assert time.monotonic() - started < 3 + 2
    assert not (tmp_path / "x.jsonl").exists()


def test_chat_many_reports_every_result_in_the_callers_thread():
    with Stub() as stub:
        client = ChatClient([stub.url], "stub", parallel=4, timeout=5)
        seen = {}
        caller = threading.get_ident()

        def on_result(key, completions):
            assert threading.get_ident() == caller
            seen[key] = completions

        client.chat_many([(i, HELLO, SamplingParams(seed=i)) for i in range(10)], on_result)
    assert seen == {i: [f"seed={i} n=0"] for i in range(10)}


# --------------------------------------------------------------------------------------------------------------------
# Launch commands, engine choice, server lifecycle


def test_vllm_command():
    assert vllm_command("/ckpt/sft", 60001, "sft", tensor_parallel_size=4, seed=3,
                        chat_template_file="/tmp/t.jinja") == [
        "vllm", "serve", "/ckpt/sft", "--served-model-name", "sft", "--host", "127.0.0.1", "--port", "60001",
        "--tensor-parallel-size", "4", "--seed", "3", "--chat-template", "/tmp/t.jinja"]
    assert vllm_command("/ckpt/sft", 8000) == [
        "vllm", "serve", "/ckpt/sft", "--served-model-name", "/ckpt/sft", "--host", "127.0.0.1", "--port", "8000",
        "--tensor-parallel-size", "1", "--seed", "0"]


def test_sglang_command():
    assert sglang_command("/ckpt/sft", 30000, "sft", tp_size=2, seed=1, chat_template="chatml.json",
                          python="python") == [
        "python", "-m", "sglang.launch_server", "--model-path", "/ckpt/sft", "--served-model-name", "sft",
        "--host", "127.0.0.1", "--port", "30000", "--tp-size", "2", "--random-seed", "1",
        "--chat-template", "chatml.json"]


def test_transformers_serve_command():
    assert transformers_serve_command("/ckpt/sft", 8001, seed=5, python="python") == [
        "python", "-m", "transformers.cli.transformers", "serve", "/ckpt/sft", "--host", "127.0.0.1", "--port", "8001",
        "--device", "auto", "--dtype", "auto", "--log-level", "info", "--default-seed", "5",
        "--no-continuous-batching"]
    built = transformers_serve_command("/m", 1, device="cuda:0", continuous_batching=True, extra_args=["--compile"])
    assert built[-2:] == ["--continuous-batching", "--compile"] and built[built.index("--device") + 1] == "cuda:0"


@pytest.mark.parametrize("gpu, vllm, sglang, expected", [
    (True, True, True, "vllm"),
    (True, False, True, "sglang"),
    (True, False, False, "transformers"),
    (False, True, True, "transformers"),
])
def test_engine_order(gpu, vllm, sglang, expected):
    assert select_engine("auto", gpu=gpu, installed={"vllm": vllm, "sglang": sglang}) == expected
    assert select_engine("sglang", gpu=False, installed={}) == "sglang"
    with pytest.raises(ValueError, match="unknown server engine 'tgi'"):
        select_engine("tgi")


def test_launch_commands_carry_the_chat_template(tmp_path, tiny_model_dir, repo_root):
    args = GenerationArguments(world_size=2, gen_chat_template="chatml", served_model_name="tiny",
                               server_extra_args="--max-model-len 2048")
    (tmp_path / "v").mkdir()
    vllm_servers, name = build_servers("/ckpt", args, "vllm", [7001], tmp_path / "v", seed=4)
    command = vllm_servers[0].command
    assert name == "tiny"
    template_file = Path(command[command.index("--chat-template") + 1])
    assert template_file.read_text() == strip_generation_tags(resolve_chat_template("chatml").template)
    assert command[:3] == ["vllm", "serve", "/ckpt"] and command[-2:] == ["--max-model-len", "2048"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2" and command[command.index("--seed") + 1] == "4"

    (tmp_path / "s").mkdir()
    args.gen_chat_template = str(repo_root / "chat_templates" / "chatml.json")
    sglang_servers, _ = build_servers("/ckpt", args, "sglang", [7002], tmp_path / "s")
    command = sglang_servers[0].command
    assert command[command.index("--chat-template") + 1] == args.gen_chat_template  # SGLang reads its JSON itself
    assert command[command.index("--tp-size") + 1] == "2"

    (tmp_path / "t").mkdir()
    args.gen_chat_template = "zephyr"
    hf_servers, name = build_servers(str(tiny_model_dir), args, "transformers", [7003], tmp_path / "t")
    shadow = Path(hf_servers[0].command[4])
    assert name == str(shadow) and shadow.parent == tmp_path / "t"
    assert (shadow / "chat_template.jinja").read_text() == resolve_chat_template("zephyr").template


def test_checkpoint_with_chat_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    template = resolve_chat_template("llama-3").template
    shadow = checkpoint_with_chat_template(tiny_model_dir, template, tmp_path / "shadow")
    assert (shadow / "model.safetensors").is_symlink()
    assert not (shadow / "tokenizer_config.json").is_symlink()
    assert AutoTokenizer.from_pretrained(shadow).chat_template == template
    assert AutoTokenizer.from_pretrained(tiny_model_dir).chat_template != template  # the original is untouched


def test_a_server_that_exits_fails_fast_with_its_log(tmp_path):
    script = "import sys; print('loading weights...'); print('CUDA out of memory', flush=True); sys.exit(3)"
    server = LocalServer([sys.executable, "-c", script], free_port(), tmp_path / "s.log", name="fake server")
    server.start()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code 3") as caught:
        server.wait_ready(timeout=30)
    assert time.monotonic() - started < 10
    assert "CUDA out of memory" in str(caught.value) and str(tmp_path / "s.log") in str(caught.value)


def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path):
    script = "import time; print('still compiling kernels', flush=True); time.sleep(60)"
    server = LocalServer([sys.executable, "-c", script], free_port(), tmp_path / "s.log", name="fake server")
    server.start()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="health check") as caught:
        server.wait_ready(timeout=1.5)
    assert time.monotonic() - started < 1.5 + 5
    assert "still compiling kernels" in str(caught.value)
    assert not server.is_running()


def test_serve_refuses_a_busy_port(tiny_model_dir):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = GenerationArguments(engine="transformers", server_ports=[port])
        with pytest.raises(ServerStartError, match=f"port\\(s\\) \\[{port}\\]"):
            with serve(str(tiny_model_dir), args):
                pass


# --------------------------------------------------------------------------------------------------------------------
# vLLM offline (a fake vllm module: vLLM is not installed here)


def test_vllm_backend_maps_arguments(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    calls = {}

    class FakeSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class FakeLLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, prompts, sampling_params, use_tqdm):
            calls.setdefault("prompts", []).extend(prompts)
            calls.setdefault("sampling", []).extend(sp.kwargs for sp in sampling_params)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" answer {i}.{j}<|im_end|>junk")
                                                   for j in range(sp.kwargs["n"])])
                    for i, sp in enumerate(sampling_params)]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams))
    items = make_items(3)
    params = SamplingParams(n=2, temperature=0.7, top_p=0.95, max_tokens=33, seed=11)
    args = GenerationArguments(backend="vllm", world_size=4, gen_chat_template="chatml")
    rows = generate(str(tiny_model_dir), items, params, args, tmp_path / "v.jsonl", progress=False)

    assert calls["llm"] == {"model": str(tiny_model_dir), "tokenizer": str(tiny_model_dir),
                            "tensor_parallel_size": 4, "seed": 11}
    assert calls["sampling"] == [{"n": 2, "temperature": 0.7, "top_p": 0.95, "max_tokens": 33, "stop": ["<|im_end|>"],
                                  "seed": item_seed(11, item["id"])} for item in items]
    texts = [tiny_tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=False,
                                                chat_template=resolve_chat_template("chatml").template)
             for item in items]
    assert texts[0].startswith("<|im_start|>user\n") and texts[0].endswith("<|im_start|>assistant\n")
    assert [p["prompt_token_ids"] for p in calls["prompts"]] == [
        tiny_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert [row["completions"] for row in rows] == [[f"answer {i}.0", f"answer {i}.1"] for i in range(3)]
    assert rows[0]["generator"]["backend"] == "vllm"


def test_vllm_backend_without_vllm_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match="backend 'vllm' needs vLLM"):
        generate("m", make_items(1), SamplingParams(), GenerationArguments(backend="vllm"), tmp_path / "x.jsonl",
                 progress=False)


# --------------------------------------------------------------------------------------------------------------------
# In process (transformers)


def test_in_process_sampling_is_reproducible_per_item_whatever_is_done(tmp_path, tiny_model_dir):
    items = make_items(5)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=8, seed=21)
    clean = generate(str(tiny_model_dir), items, params, GenerationArguments(backend="transformers",
                                                                             gen_batch_size=5),
                     tmp_path / "clean.jsonl", progress=False)
    assert any(len(set(row["completions"])) == 2 for row in clean)  # two different samples per item

    # Items q1 and q3 first (other batches, other batch sizes), then the rest as a resumed run.
    out = tmp_path / "resumed.jsonl"
    args = GenerationArguments(backend="transformers", gen_batch_size=2)
    generate(str(tiny_model_dir), [items[1], items[3]], params, args, out, progress=False)
    resumed = generate(str(tiny_model_dir), items, params, args, out, progress=False)
    assert resumed == clean
    assert len(ResumableJsonl(out)) == 5 and len(read_jsonl(out)) == 5

    greedy = generate(str(tiny_model_dir), items[:2], SamplingParams(n=2, max_tokens=8), args, tmp_path / "g.jsonl",
                      progress=False)
    assert all(len(row["completions"]) == 2 and row["completions"][0] == row["completions"][1] for row in greedy)


def test_item_seeds_are_stable_and_distinct():
    assert item_seed(0, "q1") == item_seed(0, "q1") == item_seed(0, "q1")
    assert len({item_seed(0, f"q{i}") for i in range(1000)}) == 1000
    assert item_seed(0, "q1") != item_seed(1, "q1")
    assert item_seed(0, 7) == item_seed(0, "7")  # ids are compared as text, like ResumableJsonl keys
    assert all(0 <= item_seed(s, "x") < 2**31 for s in range(50))


def test_items_may_be_prompts_and_bad_items_are_named(tmp_path):
    with Stub() as stub:
        rows = generate("m", [{"id": 1, "prompt": "hi"}, {"id": 2, "prompt": [{"role": "user", "content": "yo"}]}],
                        SamplingParams(), GenerationArguments(base_url=stub.url), tmp_path / "p.jsonl",
                        progress=False)
    sent = sorted(body["messages"][0]["content"] for body in stub.requests)  # two requests run in parallel
    assert sent == ["hi", "yo"] and all(len(body["messages"]) == 1 for body in stub.requests)
    assert [row["prompt"] for row in rows] == ["hi", [{"role": "user", "content": "yo"}]]
    bad = [{"id": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    with pytest.raises(ValueError, match=r"row 0 \(id 'a'\), field 'messages'"):
        generate("m", bad, SamplingParams(), GenerationArguments(base_url=stub.url), tmp_path / "b.jsonl")


# --------------------------------------------------------------------------------------------------------------------
# Slow tier: the real SmolLM2 through transformers serve


@pytest.mark.slow
def test_smollm2_through_transformers_serve(smollm2_dir, tmp_path):
    args = GenerationArguments(backend="server", engine="transformers", server_start_timeout=300, gen_parallel=2)
    items = [{"id": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
             {"id": "colors", "messages": [{"role": "user", "content": "Name the three primary colors."}]}]
    rows = generate(str(smollm2_dir), items, SamplingParams(max_tokens=40), args, tmp_path / "smol.jsonl",
                    progress=False)
    assert "Paris" in rows[0]["completions"][0]
    assert all(len(row["completions"]) == 1 and row["completions"][0] for row in rows)
    assert "<|im_end|>" not in rows[0]["completions"][0]


def test_resumable_jsonl_recovers_from_a_torn_last_line(tmp_path):
    from chatalign.generation import ResumableJsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "x": 1}\n{"id": 2, "x"')  # killed mid-write
    store = ResumableJsonl(path)
    assert 1 in store and 2 not in store
    store.add({"id": 2, "x": 2})
    store.add({"id": 3, "x": 3})
    again = ResumableJsonl(path)
    assert [again.get(i)["x"] for i in (1, 2, 3)] == [1, 2, 3]
    # a whole row written by hand without its final newline is kept
    path.write_text('{"id": 7, "x": 7}')
    ResumableJsonl(path).add({"id": 8, "x": 8})
    assert len(ResumableJsonl(path)) == 2


def test_local_generation_cuts_at_special_token_stops(tiny_tokenizer):
    """Stop strings such as <|im_end|> are special tokens: the text is cut at them before specials are stripped."""
    import torch

    from chatalign.generation import SamplingParams, generate_local

    continuation = tiny_tokenizer.encode("Paris.<|im_end|>\n<|im_start|>user\nmore", add_special_tokens=False)

    class ScriptedModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            tail = torch.tensor([continuation] * input_ids.shape[0])
            return torch.cat([input_ids, tail], dim=1)

    tok = tiny_tokenizer
    tok.padding_side = "left"
    out = generate_local(ScriptedModel(), tok, [[{"role": "user", "content": "Capital of France?"}]],
                         SamplingParams(max_tokens=16, stop=["<|im_end|>"]), progress=False)
    assert out == [["Paris."]]
    unstopped = generate_local(ScriptedModel(), tok, [[{"role": "user", "content": "Capital of France?"}]],
                               SamplingParams(max_tokens=16), progress=False)
    assert unstopped == [["Paris.\nuser\nmore"]]


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_model_dir):
    from chatalign.generation import GenerationArguments, SamplingParams, generate

    items = [{"id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    args = GenerationArguments(backend="transformers")
    out = tmp_path / "gen.jsonl"
    generate(str(tiny_model_dir), items, SamplingParams(max_tokens=2), args, out, progress=False)
    with pytest.raises(ValueError, match=r"item 'a' was generated with params .* this run asks for"):
        generate(str(tiny_model_dir), items, SamplingParams(max_tokens=2, n=3), args, out, progress=False)
