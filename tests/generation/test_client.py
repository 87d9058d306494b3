"""chatalign.generation.client against a stub server: retries, backoff, round robin, n, request fields, errors."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers.chat_stub import Stub, make_items

from chatalign.generation.client import ChatClient, ChatRequestError, EndpointError, client_from_args
from chatalign.generation.generate import generate
from chatalign.generation.params import GenerationArguments, SamplingParams, item_seed, sample_seed
from chatalign.generation.servers import free_port

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
