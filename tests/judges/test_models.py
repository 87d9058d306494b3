"""chatalign.judges.models and .pairrm: reward models, llm-blender's PairRM, LLM judges (in process, over HTTP, a real
server), and judges whose head did not load."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_classifier
from helpers.judging import PROMPT, reply_in

from chatalign.generation.params import GenerationArguments
from chatalign.judges.cache import JudgmentCache, cached_scores
from chatalign.judges.loading import JudgeArguments, load_judge
from chatalign.judges.models import LLMJudge, RewardModelJudge
from chatalign.judges.prompts import SINGLE_SYSTEM_PROMPT
from chatalign.judges.tournament import tournament_wins
from chatalign.synth.pairs import DROP_TOO_FEW, rank_prompts


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny_rm"), tiny_tokenizer)


def direct_logits(model_dir, texts, add_special_tokens):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [model(**tok(t, add_special_tokens=add_special_tokens, return_tensors="pt")).logits[0].tolist()
                for t in texts]


def test_reward_model_scores_are_its_logits(reward_model_dir, tiny_tokenizer):
    judge = load_judge(f"reward_model:{reward_model_dir}")
    assert judge.name == f"reward_model:{reward_model_dir.resolve()}"
    assert judge.classifier.model is None  # loaded on the first judgment only
    responses = ["An apple.", "A pear, which is sweet and grows on trees.", "Fig"]
    out = judge.score_batch([(PROMPT, r) for r in responses])  # one padded batch
    texts = [tiny_tokenizer.apply_chat_template([*PROMPT, {"role": "assistant", "content": r}], tokenize=False)
             for r in responses]
    expected = [row[0] for row in direct_logits(reward_model_dir, texts, add_special_tokens=False)]
    assert [j.value for j in out] == pytest.approx(expected, abs=1e-5)
    assert len(set(round(j.value, 6) for j in out)) == 3


def test_two_label_reward_model_and_bad_label_count(tmp_path, tiny_tokenizer):
    two = build_tiny_classifier(tmp_path / "two", tiny_tokenizer, num_labels=2)
    judge = RewardModelJudge(str(two))
    value = judge.score_batch([(PROMPT, "Kiwi.")])[0].value
    text = tiny_tokenizer.apply_chat_template([*PROMPT, {"role": "assistant", "content": "Kiwi."}], tokenize=False)
    logits = direct_logits(two, [text], add_special_tokens=False)[0]
    assert value == pytest.approx(logits[1] - logits[0], abs=1e-5)
    three = build_tiny_classifier(tmp_path / "three", tiny_tokenizer, num_labels=3)
    with pytest.raises(ValueError, match="num_labels=3"):
        RewardModelJudge(str(three)).score_batch([(PROMPT, "Kiwi.")])


def build_tiny_pairrm(out_dir: Path, tokenizer, seed: int = 0, head: bool = True) -> Path:
    """A 2-layer DeBERTa-v2 PairRM (hidden 32) with the session tokenizer plus PairRM's prefix tokens, saved."""
    import copy

    from transformers import DebertaV2Config, DebertaV2Model

    from chatalign.judges.pairrm import CANDIDATE1_PREFIX, CANDIDATE2_PREFIX, SOURCE_PREFIX, DebertaV2PairRM

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": [SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX]})
    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                             n_tasks=1, drop_out=0.05, source_prefix_id=tok.convert_tokens_to_ids(SOURCE_PREFIX),
                             cand1_prefix_id=tok.convert_tokens_to_ids(CANDIDATE1_PREFIX),
                             cand2_prefix_id=tok.convert_tokens_to_ids(CANDIDATE2_PREFIX))
    (DebertaV2PairRM(config) if head else DebertaV2Model(config)).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def pairrm_reference_logit(model_dir, source, a, b, source_max=1224, candidate_max=412):
    """PairRM as the llm-blender/PairRM-hf model card computes it: its tokenize_pair, then the head over the
    encodings at the three prefix tokens."""
    from transformers import AutoTokenizer

    from chatalign.judges.pairrm import DebertaV2PairRM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = DebertaV2PairRM.from_pretrained(model_dir).eval()
    source_ids = tok.encode("<|source|>" + source, max_length=source_max, truncation=True)
    each = (source_max + 2 * candidate_max - len(source_ids)) // 2
    ids = (source_ids + tok.encode("<|candidate1|>" + a, max_length=each, truncation=True)
           + tok.encode("<|candidate2|>" + b, max_length=each, truncation=True))
    with torch.no_grad():
        hidden = model.pretrained_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        at = {name: hidden[ids.index(tok.convert_tokens_to_ids(name))]
              for name in ("<|source|>", "<|candidate1|>", "<|candidate2|>")}
        left = model.head_layer(torch.cat([at["<|source|>"], at["<|candidate1|>"]]))
        right = model.head_layer(torch.cat([at["<|source|>"], at["<|candidate2|>"]]))
    return (left - right).mean().item(), len(ids)


def test_pairrm_is_llm_blenders_pairwise_comparison(tmp_path, tiny_tokenizer):
    from chatalign.judges.pairrm import load_pairrm, pairrm_logits

    model_dir = build_tiny_pairrm(tmp_path / "pairrm", tiny_tokenizer)
    judge = load_judge(f"pairrm:{model_dir}")
    assert (judge.pointwise, judge.pairwise) == (False, True) and judge.model is None
    out = judge.compare_batch([(PROMPT, "Apple.", "A car."), (PROMPT, "A car.", "Apple."),
                               (PROMPT, "A pear, sweet and grown on trees.", "Fig")])  # one padded batch
    for judgment, (a, b) in zip(out, [("Apple.", "A car."), ("A car.", "Apple."),
                                      ("A pear, sweet and grown on trees.", "Fig")], strict=True):
        logit, _ = pairrm_reference_logit(model_dir, "Name a fruit.", a, b)
        assert judgment.value == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-5)
    assert out[0].value != pytest.approx(out[1].value)  # an ordered comparison
    # the model card's cut: the source to its maximum, each candidate to half of what is left
    model, tok = load_pairrm(str(model_dir))
    long = "word " * 80
    logit, length = pairrm_reference_logit(model_dir, long, long, "short", source_max=30, candidate_max=10)
    assert length == 30 + (50 - 30) // 2 + len(tok.encode("<|candidate2|>short"))
    ours = pairrm_logits(model, tok, [long], [long], ["short"], source_max_length=30, candidate_max_length=10)
    assert ours == [pytest.approx(logit, abs=1e-5)]
    # and it ranks through the tournament: scores are the wins its probabilities give
    texts = ["Apple.", "A car.", "Pear"]
    probs = {(a, b): judge.compare_batch([(PROMPT, a, b)])[0].value for a in texts for b in texts if a != b}
    ranking = rank_prompts([(PROMPT, texts, None)], judge, None)[0]
    assert ranking.scores == tournament_wins(texts, lambda a, b: probs[(a, b)])[0]
    assert sum(ranking.scores) == 3.0 and ranking.unparseable == 0


def test_a_judge_whose_head_did_not_load_is_an_error(tmp_path, tiny_tokenizer, tiny_model_dir, reward_model_dir):
    no_head = build_tiny_pairrm(tmp_path / "encoder_only", tiny_tokenizer, head=False)
    with pytest.raises(ValueError, match=r"judge pairrm:.*encoder_only: \d+ weights did not load .*head_layer"):
        load_judge(f"pairrm:{no_head}").compare_batch([(PROMPT, "a", "b")])
    with pytest.raises(ValueError, match=r"judge pairrm:.*: its config.json has no n_tasks, drop_out"):
        load_judge(f"pairrm:{reward_model_dir}").compare_batch([(PROMPT, "a", "b")])  # no PairRM at all
    # a causal LM loaded as a reward model gets a fresh, untrained score head: an error, not random scores
    with pytest.raises(ValueError, match=r"\['score.weight'\] did not load: it has no trained score head"):
        load_judge(f"reward_model:{tiny_model_dir}").score_batch([(PROMPT, "a")])


def test_llm_judge_over_a_callable():
    def complete(messages):
        reply = reply_in(messages)
        return "no idea" if reply == "?" else f"Looks fine.\nRating: [[{len(reply)}]]"

    judge = LLMJudge.from_callable(complete, "stub")
    out = judge.score_batch([(PROMPT, "Apple"), (PROMPT, "?"), (PROMPT, "A long answer")])
    assert [j.value for j in out] == [5.0, None, None]  # 13 is outside 1..10: unparseable
    assert out[0].raw == "Looks fine.\nRating: [[5]]" and judge.calls == 3
    assert judge.name.startswith("llm:stub|prompts:") and judge.name.endswith("|max_tokens:1024")

    verdicts = iter(["[[A]]", "[[B]]", "[[C]]", "hmm"])
    pairwise = LLMJudge.from_callable(lambda messages: next(verdicts), "stub")
    got = pairwise.compare_batch([(PROMPT, "a", "b")] * 4)
    assert [j.value for j in got] == [1.0, 0.0, 0.5, None]

    broken = LLMJudge(lambda conversations: ["Rating: [[1]]"], "broken")
    with pytest.raises(RuntimeError, match="1 answers for 2 requests"):
        broken.score_batch([(PROMPT, "a"), (PROMPT, "b")])


def test_in_process_llm_judge_on_the_tiny_model_is_unparseable_and_counted(tiny_model_dir):
    judge = load_judge(f"llm:{tiny_model_dir}", JudgeArguments(judge_max_tokens=6))
    assert judge.name.startswith(f"llm:{tiny_model_dir.resolve()}|")
    out = judge.score_batch([(PROMPT, "Apple."), (PROMPT, "A car.")])
    assert all(j.value is None and isinstance(j.raw, str) for j in out)  # random weights: no "Rating: [[n]]"
    ranking = rank_prompts([(PROMPT, ["Apple.", "A car.", "Apple."], None)], judge, None)[0]
    assert (ranking.status, ranking.unparseable, ranking.scores) == (DROP_TOO_FEW, 3, [None, None, None])


class StubOpenAI(BaseHTTPRequestHandler):
    """GET /v1/models and POST /v1/chat/completions: the rating is the length of the reply to rate."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        StubOpenAI.requests.append({"path": self.path})
        self._send({"object": "list", "data": [{"id": "stub-judge", "object": "model", "owned_by": "test"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubOpenAI.requests.append({"path": self.path, **body})
        answer = f"Rating: [[{len(reply_in(body['messages']))}]]"
        self._send({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def stub_server():
    StubOpenAI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_llm_judge_over_http_through_the_chat_client(stub_server, tmp_path):
    """llm:<url> goes through the generation layer's ChatClient (client_from_args); the model is asked for once."""
    judge_args = JudgeArguments(judge_parallel=2, judge_max_tokens=32)
    judge = load_judge(f"llm:{stub_server}", judge_args, GenerationArguments(max_retries=0))
    assert StubOpenAI.requests == []  # nothing is sent before the first uncached judgment
    cache = JudgmentCache(tmp_path / "j.jsonl")
    out = cached_scores(judge, cache, [(PROMPT, "Apple"), (PROMPT, "Fig"), (PROMPT, "Apple")])
    assert [j.value for j in out] == [5.0, 3.0, 5.0]
    posts = [r for r in StubOpenAI.requests if r["path"].endswith("/chat/completions")]
    assert len(posts) == 2 and {p["model"] for p in posts} == {"stub-judge"}
    assert {p["temperature"] for p in posts} == {0.0} and {p["max_tokens"] for p in posts} == {32}
    assert posts[0]["messages"][0] == {"role": "system", "content": SINGLE_SYSTEM_PROMPT}
    # a rerun in a new process finds every judgment cached: not one request
    StubOpenAI.requests = []
    again = load_judge(f"llm:{stub_server}", judge_args)
    cached_scores(again, JudgmentCache(tmp_path / "j.jsonl"), [(PROMPT, "Apple"), (PROMPT, "Fig")])
    assert StubOpenAI.requests == []
    named = load_judge(f"llm:other-model@{stub_server}", judge_args)
    assert cached_scores(named, None, [(PROMPT, "Kiwi")])[0].value == 4.0
    assert [r["model"] for r in StubOpenAI.requests] == ["other-model"]


def test_llm_judge_against_a_real_transformers_serve(tiny_model_dir, tmp_path):
    """llm:<url> of a `transformers serve` for the tiny Llama (the generation layer's serve()): the model name comes
    from GET /models; the random model's answers are unparseable, and counted as such, not a crash."""
    from chatalign.generation.servers import free_ports, serve

    server_args = GenerationArguments(backend="server", engine="transformers", server_ports=free_ports(1),
                                      server_start_timeout=180)
    with serve(str(tiny_model_dir), server_args) as endpoints:
        url = list(endpoints)[0]
        judge = load_judge(f"llm:{url}", JudgeArguments(judge_max_tokens=8, judge_parallel=2))
        cache = JudgmentCache(tmp_path / "j.jsonl")
        ranking = rank_prompts([(PROMPT, ["Apple.", "A car.", "Pear."], None)], judge, cache)[0]
    assert judge.name.startswith(f"llm:{url}|prompts:")
    assert (ranking.status, ranking.unparseable) == (DROP_TOO_FEW, 3)
    assert cache.paid == 3 and all(isinstance(row["raw"], str) for row in cache.store.rows())
