"""chatalign.generation.generate: generate() against a real `transformers serve` on loopback (launched, balanced,
killed and resumed), vLLM's argument mapping, item checks."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest
from helpers.chat_stub import Stub, make_items, read_jsonl

from chatalign.data.templates import resolve_chat_template
from chatalign.generation.client import ChatClient, ChatRequestError, EndpointError
from chatalign.generation.engines import transformers_serve_command
from chatalign.generation.generate import generate
from chatalign.generation.local import generate_local
from chatalign.generation.params import GenerationArguments, SamplingParams, item_seed
from chatalign.generation.servers import LocalServer, free_ports, serve


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

    from chatalign.data.tokenizers import load_tokenizer

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


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_model_dir):
    from chatalign.generation.generate import generate
    from chatalign.generation.params import GenerationArguments, SamplingParams

    items = [{"id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    args = GenerationArguments(backend="transformers")
    out = tmp_path / "gen.jsonl"
    generate(str(tiny_model_dir), items, SamplingParams(max_tokens=2), args, out, progress=False)
    with pytest.raises(ValueError, match=r"item 'a' was generated with params .* this run asks for"):
        generate(str(tiny_model_dir), items, SamplingParams(max_tokens=2, n=3), args, out, progress=False)
