"""chatalign.eval.judge: every judgment cached and never paid twice (counted at a real `transformers serve` judge),
the estimate and confirmation before paid calls, keys from the environment only, provenance."""

from __future__ import annotations

import json

import pytest
from helpers.chat_stub import Stub
from helpers.counting_proxy import CountingProxy

from chatalign.eval.judge import PRICES_USD_PER_MTOK, EvalJudge, EvalJudgeArguments, estimate
from chatalign.generation.client import EndpointError
from chatalign.generation.params import GenerationArguments

REQUESTS = [[{"role": "system", "content": "You are a judge."}, {"role": "user", "content": f"Rate answer {i}."}]
            for i in range(6)]
NO_RETRY = GenerationArguments(max_retries=0, retry_backoff=0.01, request_timeout=120)


def http_judge(url: str, model: str, cache, **kwargs) -> EvalJudge:
    args = EvalJudgeArguments(judge_model=model, judge_base_url=url, judge_engine="transformers",
                              **{"judge_parallel": 1, "judge_max_tokens": 8, **kwargs})
    return EvalJudge(args, cache, NO_RETRY, confirm=lambda _: pytest.fail("a loopback judge is never confirmed"))


def test_estimate_counts_calls_tokens_and_list_price():
    requests = [[{"role": "user", "content": "x" * 4000}]] * 3  # 1,000 prompt tokens each at 4 characters a token
    plan = estimate(requests, "gpt-4", max_tokens=1000)
    prompt_price, completion_price = PRICES_USD_PER_MTOK["gpt-4"]
    assert (plan["calls"], plan["prompt_tokens"], plan["completion_tokens"]) == (3, 3000, 900)
    assert plan["cost_usd"] == pytest.approx((3000 * prompt_price + 900 * completion_price) / 1e6)
    assert plan["cost_usd_at_most"] == pytest.approx((3000 * prompt_price + 3000 * completion_price) / 1e6)
    overridden = estimate(requests, "my-judge", max_tokens=100, price_per_mtok="1,2")
    assert overridden["cost_usd"] == pytest.approx((3000 * 1 + 300 * 2) / 1e6)
    assert overridden["price_source"] == "--price_per_mtok"
    unknown = estimate(requests, "my-judge", max_tokens=100)
    assert "cost_usd" not in unknown and unknown["price_source"] is None


def test_a_killed_judge_loses_nothing_and_no_judgment_is_asked_twice(served_tiny_judge, tmp_path):
    url, model = served_tiny_judge
    cache = tmp_path / "judgments.jsonl"
    with CountingProxy(url, die_after=4) as proxy:  # the judge dies after its 4th request
        judge = http_judge(proxy.url, model, cache)
        with pytest.raises(EndpointError, match=proxy.url):
            judge.judge(REQUESTS, progress=False)
        assert proxy.chat_requests == 4 and judge.paid == 4
    assert len(cache.read_text().splitlines()) == 4  # each judgment was written the moment it arrived

    with CountingProxy(url) as proxy:  # rerun: only the two missing judgments are asked for
        judge = http_judge(proxy.url, model, cache)
        outputs = judge.judge(REQUESTS, progress=False)
        asked = [json.loads(body)["messages"][-1]["content"] for body in proxy.bodies]
        assert proxy.chat_requests == 2 and asked == ["Rate answer 4.", "Rate answer 5."]
        assert all(isinstance(o["output"], str) for o in outputs)
        again = http_judge(proxy.url, model, cache).judge(REQUESTS + REQUESTS[:2], progress=False)
        assert proxy.chat_requests == 2  # an unchanged rerun (and repeated requests) make no call
    assert [o["output"] for o in again[:6]] == [o["output"] for o in outputs]
    assert judge.provenance("v1")["judge_model_id"] == [model]  # the id the server answered with


def test_another_judge_or_sampling_is_another_judgment(served_tiny_judge, tmp_path):
    url, model = served_tiny_judge
    cache = tmp_path / "judgments.jsonl"
    with CountingProxy(url) as proxy:
        http_judge(proxy.url, model, cache).judge(REQUESTS[:1], progress=False)
        http_judge(proxy.url, model, cache, judge_parallel=4).judge(REQUESTS[:1], progress=False)
        assert proxy.chat_requests == 1  # parallelism is not part of a judgment
        http_judge(proxy.url, model, cache, judge_max_tokens=9).judge(REQUESTS[:1], progress=False)
        assert proxy.chat_requests == 2
    assert http_judge(url, "another-judge", cache).key(REQUESTS[0]) != http_judge(url, model, cache).key(REQUESTS[0])


def test_a_paid_judge_without_its_key_fails_before_any_call(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATALIGN_TEST_JUDGE_KEY", raising=False)
    args = EvalJudgeArguments(judge_model="gpt-4", judge_max_tokens=8, judge_api_key_env="CHATALIGN_TEST_JUDGE_KEY")
    judge = EvalJudge(args, tmp_path / "j.jsonl", confirm=lambda _: pytest.fail("asked before the key check"))
    with pytest.raises(ValueError, match=r"gpt-4 at https://api.openai.com/v1: \$CHATALIGN_TEST_JUDGE_KEY is not set"):
        judge.judge(REQUESTS, progress=False)
    assert judge.paid == 0 and not (tmp_path / "j.jsonl").exists()


def test_paid_calls_are_estimated_and_confirmed_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHATALIGN_TEST_JUDGE_KEY", "not-a-real-key")
    questions = []
    args = EvalJudgeArguments(judge_model="gpt-4o-mini", judge_base_url="http://judge.invalid/v1", judge_max_tokens=8,
                              judge_api_key_env="CHATALIGN_TEST_JUDGE_KEY")
    judge = EvalJudge(args, tmp_path / "j.jsonl", confirm=lambda q: questions.append(q) or "n")
    with pytest.raises(SystemExit, match="no judge call made"):
        judge.judge(REQUESTS, progress=False)
    printed = capsys.readouterr().err
    assert questions == ["Make these calls? [y/N] "] and judge.paid == 0
    assert "6 calls not in the cache" in printed and "estimated cost $" in printed and "list price 2026-03" in printed
    assert "not-a-real-key" not in printed


def test_an_unreachable_judge_is_named_before_work_is_sent(tmp_path):
    from chatalign.generation.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = http_judge(url, "m", tmp_path / "j.jsonl")
    with pytest.raises(ConnectionError, match=url):
        judge.judge(REQUESTS, progress=False)
    assert judge.paid == 0


def test_logprob_scoring_over_http_reads_the_rating_token(tmp_path):
    def logprobs(body, content):
        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in (("7", -0.2231), ("8", -1.6094), ("x", -3.0))]
        return [{"token": tok, "logprob": -0.1, "bytes": None, "top_logprobs": top if tok == "7" else []}
                for tok in ("Fine. ", "Rating: ", "[[", "7", "]]")]

    with Stub(content="Fine. Rating: [[7]]", logprobs=logprobs) as stub:
        judge = http_judge(stub.url, "stub", tmp_path / "j.jsonl", judge_scoring="logprobs", judge_top_logprobs=5)
        (judgment,) = judge.judge(REQUESTS[:1], progress=False)
        assert stub.requests[0]["logprobs"] is True and stub.requests[0]["top_logprobs"] == 5
    assert judgment["rating_probs"] == pytest.approx({"7": 0.8 / 1.0, "8": 0.2 / 1.0}, abs=1e-4)
    assert judge.name == "stub+logprobs"


def test_logprob_scoring_asks_once_more_when_the_judge_wrote_no_rating(tmp_path):
    def content(body):
        return "[[9]]" if "only your rating" in body["messages"][-1]["content"] else "I cannot decide."

    def logprobs(body, text):
        return [{"token": t, "logprob": 0.0, "bytes": None, "top_logprobs": [{"token": t, "logprob": 0.0,
                                                                                 "bytes": None}]}
                for t in (["[[", "9", "]]"] if text.startswith("[[") else [text])]

    with Stub(content=content, logprobs=logprobs) as stub:
        judge = http_judge(stub.url, "stub", tmp_path / "j.jsonl", judge_scoring="logprobs")
        (judgment,) = judge.judge(REQUESTS[:1], progress=False)
        assert len(stub.requests) == 2 and judge.paid == 2
    assert judgment["output"] == "I cannot decide." and judgment["rating_probs"] == {"9": 1.0}


def test_logprob_scoring_against_a_server_without_logprobs_is_a_clear_error(served_tiny_judge, tmp_path):
    url, model = served_tiny_judge
    judge = http_judge(url, model, tmp_path / "j.jsonl", judge_scoring="logprobs")
    with pytest.raises(ValueError, match="returns no logprobs.*vLLM, SGLang, OpenAI") as raised:
        judge.judge(REQUESTS[:1], progress=False)
    assert url in str(raised.value)
    assert not (tmp_path / "j.jsonl").exists() or (tmp_path / "j.jsonl").read_text() == ""


def test_a_local_checkpoint_judge_is_served_for_the_run(tmp_path, tiny_model_dir):
    """judge_model a checkpoint folder (no judge_base_url): chatalign launches `transformers serve` for it, judges
    over HTTP, and stops it; the verdicts are cached like any judge's."""
    args = EvalJudgeArguments(judge_model=str(tiny_model_dir), judge_engine="transformers", judge_max_tokens=6,
                              judge_parallel=2)
    judge = EvalJudge(args, tmp_path / "j.jsonl", GenerationArguments(server_start_timeout=180, max_retries=0),
                      confirm=lambda _: pytest.fail("a local judge is never confirmed"))
    outputs = judge.judge(REQUESTS[:3], progress=False)
    assert judge.paid == 3 and all(isinstance(o["output"], str) for o in outputs)
    assert judge.provenance("v")["judge_endpoint"] == "local checkpoint" and judge.name == tiny_model_dir.name
    again = EvalJudge(args, tmp_path / "j.jsonl", GenerationArguments(), confirm=input)
    assert [o["output"] for o in again.judge(REQUESTS[:3], progress=False)] == [o["output"] for o in outputs]
    assert again.paid == 0  # all cached: no server launched at all
