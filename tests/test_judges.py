"""chatalign.judges and scripts/judge_dataset.py: verdict parsing, the tournament, the judgment cache, reward model /
pair classifier / LLM judges (a deterministic callable, the tiny Llama in process, an OpenAI-compatible HTTP stub
through the generation layer's ChatClient) and the re-annotation agreement numbers."""

from __future__ import annotations

import csv
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import load_script

from chatalign import judges, pairs
from chatalign.generation import GenerationArguments
from chatalign.judges import FunctionJudge, Judgment, JudgmentCache, LLMJudge


def build_tiny_classifier(out_dir: Path, tokenizer, num_labels: int = 1, seed: int = 0) -> Path:
    """A 2-layer LlamaForSequenceClassification (hidden 32) with the session tokenizer, saved as a checkpoint."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny_rm"), tiny_tokenizer)


PROMPT = [{"role": "user", "content": "Name a fruit."}]


def length_judge(**kwargs) -> FunctionJudge:
    """Longer is better; a response containing '?' gets no score (an unparseable verdict)."""
    return FunctionJudge("length", score=lambda p, r: None if "?" in r else float(len(r)), **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Parsing and specs


@pytest.mark.parametrize("text, expected", [
    ("Clear and correct.\nRating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("The format is [[5]] ... final: [[9]]", 9.0),   # the last verdict wins
    ("Rating: 3", 3.0),                              # no brackets: the 'Rating:' fallback
    ("Rating: [4]", 4.0),
    ("Rating: [[11]]", None),                        # out of range: unparseable, not clipped
    ("Rating: [[0]]", None),
    ("I like it a lot.", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text, expected):
    assert judges.parse_rating(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("A is better. [[A]]", "A"), ("[[b]]", "B"), ("tie [[C]]", "C"), ("[[A]] no wait [[B]]", "B"),
    ("A is better", None), ("[[D]]", None), (None, None)])
def test_parse_verdict(text, expected):
    assert judges.parse_verdict(text) == expected


def test_judge_specs(tmp_path):
    assert judges.parse_judge_spec("reward_model:/m/rm") == judges.JudgeSpec("reward_model", "/m/rm")
    assert judges.parse_judge_spec("rm:/m/rm").kind == "reward_model"
    assert judges.parse_judge_spec("pairrm:/m/p") == judges.JudgeSpec("pairrm", "/m/p")
    assert judges.parse_judge_spec("llm:gpt-4o@https://api.example.com/v1").target == "gpt-4o@https://api.example.com/v1"
    assert judges.parse_judge_spec("gpt-4o", default_kind="llm") == judges.JudgeSpec("llm", "gpt-4o")
    with pytest.raises(ValueError, match="expected reward_model:<path>, pairrm:<path> or llm:"):
        judges.parse_judge_spec("gpt-4o")
    with pytest.raises(ValueError, match="empty"):
        judges.parse_judge_spec("")
    assert judges.resolve_llm_target(str(tmp_path)) == ("local", str(tmp_path.resolve()), None)
    assert judges.resolve_llm_target("http://127.0.0.1:8000/v1") == ("http", "http://127.0.0.1:8000/v1", None)
    assert judges.resolve_llm_target("qwen@http://h:1/v1") == ("http", "http://h:1/v1", "qwen")
    assert judges.resolve_llm_target("gpt-4o") == ("http", judges.DEFAULT_OPENAI_URL, "gpt-4o")
    assert judges.resolve_llm_target("gpt-4o", "http://h:2/v1") == ("http", "http://h:2/v1", "gpt-4o")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        judges.load_judge(f"reward_model:{tmp_path / 'missing'}")


def test_judge_prompts_show_the_conversation_and_the_reply():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a fruit."}]
    messages = judges.single_judge_messages(prompt, "Apple.")
    assert messages[0] == {"role": "system", "content": judges.SINGLE_SYSTEM_PROMPT}
    assert messages[1]["content"] == ("[Conversation]\nSystem: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\n"
                                      "User: Name a fruit.\n\n[Reply to rate]\nApple.\n[End of reply]")
    assert 'Rating: [[7]]' in judges.SINGLE_SYSTEM_PROMPT
    pair = judges.pair_judge_messages(prompt[-1:], "Apple.", "A car.")
    assert pair[1]["content"] == ("[Conversation]\nUser: Name a fruit.\n\n[Reply A]\nApple.\n[End of reply A]\n\n"
                                  "[Reply B]\nA car.\n[End of reply B]")


# --------------------------------------------------------------------------------------------------------------------
# Tournament


def by_length(prompt, a, b):
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def test_tournament_ranks_by_wins():
    scores, unjudged = judges.rank_by_wins(PROMPT, ["aa", "a", "aaaa", "aaa"], by_length)
    assert (scores, unjudged) == ([1.0, 0.0, 3.0, 2.0], 0)
    # equal lengths, distinct texts: the comparator says 0.5 -> half a point each
    assert judges.rank_by_wins(PROMPT, ["ab", "cd", "e"], by_length)[0] == [1.5, 1.5, 0.0]


def test_tournament_cancels_position_bias_in_both_orders():
    first_wins = lambda prompt, a, b: 1.0  # noqa: E731 -- a judge that always prefers whatever it is shown first
    texts = ["w", "x", "y", "z"]
    assert judges.rank_by_wins(PROMPT, texts, first_wins)[0] == [1.5, 1.5, 1.5, 1.5]
    assert judges.rank_by_wins(PROMPT, texts, first_wins, both_orders=False)[0] == [3.0, 2.0, 1.0, 0.0]


def test_tournament_compares_distinct_texts_once_per_order():
    calls = []

    def compare(prompt, a, b):
        calls.append((a, b))
        return by_length(prompt, a, b)

    scores, _ = judges.rank_by_wins(PROMPT, ["bb", "a", "bb", "a"], compare)
    assert sorted(calls) == [("a", "bb"), ("bb", "a")]
    # bb beats both a's (2 points) and ties the other bb (0.5)
    assert scores == [2.5, 0.5, 2.5, 0.5]


def test_tournament_counts_unjudged_pairs():
    def compare(prompt, a, b):
        return None if {a, b} == {"a", "ccc"} else by_length(prompt, a, b)

    scores, unjudged = judges.rank_by_wins(PROMPT, ["a", "bb", "ccc"], compare)
    assert (scores, unjudged) == ([0.0, 1.0, 1.0], 1)
    # one order parsed: it alone decides
    one_order = lambda prompt, a, b: None if (a, b) == ("ccc", "a") else by_length(prompt, a, b)  # noqa: E731
    assert judges.rank_by_wins(PROMPT, ["a", "bb", "ccc"], one_order) == ([0.0, 1.0, 2.0], 0)


# --------------------------------------------------------------------------------------------------------------------
# Cache


def test_cache_pays_each_judgment_once(tmp_path):
    judge = length_judge()
    cache = JudgmentCache(tmp_path / "a.jsonl")
    requests = [(PROMPT, "pear"), (PROMPT, "fig"), (PROMPT, "pear"), (PROMPT, "why?")]
    out = judges.cached_scores(judge, cache, requests)
    assert [j.value for j in out] == [4.0, 3.0, 4.0, None]
    assert judge.calls == cache.paid == 3  # the repeated "pear" is asked once
    again = JudgmentCache(tmp_path / "a.jsonl")  # a new process reads the file
    assert [j.value for j in judges.cached_scores(judge, again, requests)] == [4.0, 3.0, 4.0, None]
    assert judge.calls == 3 and again.paid == 0
    # another process's file is read too; a different prompt or judge is a different judgment
    other = JudgmentCache(tmp_path / "b.jsonl", read_also=[tmp_path / "a.jsonl"])
    judges.cached_scores(judge, other, [(PROMPT, "pear"), ([{"role": "user", "content": "x"}], "pear")])
    assert other.paid == 1
    renamed = FunctionJudge("length-v2", score=lambda p, r: 1.0)
    judges.cached_scores(renamed, other, [(PROMPT, "pear")])
    assert renamed.calls == 1


def test_failed_requests_are_not_cached(tmp_path):
    class Flaky:
        name, pointwise, pairwise, chunk_size = "flaky", True, False, 8

        def __init__(self):
            self.fail = True

        def score_batch(self, requests):
            return [None if self.fail else Judgment(1.0, "Rating: [[1]]") for _ in requests]

    judge, cache = Flaky(), JudgmentCache(tmp_path / "c.jsonl")
    assert judges.cached_scores(judge, cache, [(PROMPT, "x")])[0].value is None
    assert len(JudgmentCache(tmp_path / "c.jsonl")) == 0
    judge.fail = False
    assert judges.cached_scores(judge, JudgmentCache(tmp_path / "c.jsonl"), [(PROMPT, "x")])[0].value == 1.0


# --------------------------------------------------------------------------------------------------------------------
# Model judges


def direct_logits(model_dir, texts, add_special_tokens):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [model(**tok(t, add_special_tokens=add_special_tokens, return_tensors="pt")).logits[0].tolist()
                for t in texts]


def test_reward_model_scores_are_its_logits(reward_model_dir, tiny_tokenizer):
    judge = judges.load_judge(f"reward_model:{reward_model_dir}")
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
    judge = judges.RewardModelJudge(str(two))
    value = judge.score_batch([(PROMPT, "Kiwi.")])[0].value
    text = tiny_tokenizer.apply_chat_template([*PROMPT, {"role": "assistant", "content": "Kiwi."}], tokenize=False)
    logits = direct_logits(two, [text], add_special_tokens=False)[0]
    assert value == pytest.approx(logits[1] - logits[0], abs=1e-5)
    three = build_tiny_classifier(tmp_path / "three", tiny_tokenizer, num_labels=3)
    with pytest.raises(ValueError, match="num_labels=3"):
        judges.RewardModelJudge(str(three)).score_batch([(PROMPT, "Kiwi.")])


def test_pair_classifier_gives_the_probability_of_the_first(reward_model_dir):
    judge = judges.load_judge(f"pairrm:{reward_model_dir}")
    assert (judge.pointwise, judge.pairwise) == (False, True)
    out = judge.compare_batch([(PROMPT, "Apple.", "A car."), (PROMPT, "A car.", "Apple.")])
    text = judges.PAIR_TEXT_TEMPLATE.format(conversation="User: Name a fruit.", a="Apple.", b="A car.")
    logit = direct_logits(reward_model_dir, [text], add_special_tokens=True)[0][0]
    assert out[0].value == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
    assert all(0.0 < j.value < 1.0 for j in out)
    # and it ranks through the tournament: scores are the wins its probabilities give
    texts = ["Apple.", "A car.", "Pear"]
    probs = {(a, b): judge.compare_batch([(PROMPT, a, b)])[0].value for a in texts for b in texts if a != b}
    ranking = pairs.rank_prompts([(PROMPT, texts, None)], judge, None)[0]
    assert ranking.scores == judges.tournament_wins(texts, lambda a, b: probs[(a, b)])[0]
    assert sum(ranking.scores) == 3.0 and ranking.unparseable == 0


# --------------------------------------------------------------------------------------------------------------------
# LLM judges


def reply_in(messages) -> str:
    return re.search(r"\[Reply to rate\]\n(.*)\n\[End of reply\]", messages[-1]["content"], re.S).group(1)


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
    judge = judges.load_judge(f"llm:{tiny_model_dir}", judges.JudgeArguments(judge_max_tokens=6))
    assert judge.name.startswith(f"llm:{tiny_model_dir.resolve()}|")
    out = judge.score_batch([(PROMPT, "Apple."), (PROMPT, "A car.")])
    assert all(j.value is None and isinstance(j.raw, str) for j in out)  # random weights: no "Rating: [[n]]"
    ranking = pairs.rank_prompts([(PROMPT, ["Apple.", "A car.", "Apple."], None)], judge, None)[0]
    assert (ranking.status, ranking.unparseable, ranking.scores) == (pairs.DROP_TOO_FEW, 3, [None, None, None])


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
    judge_args = judges.JudgeArguments(judge_parallel=2, judge_max_tokens=32)
    judge = judges.load_judge(f"llm:{stub_server}", judge_args, GenerationArguments(max_retries=0))
    assert StubOpenAI.requests == []  # nothing is sent before the first uncached judgment
    cache = JudgmentCache(tmp_path / "j.jsonl")
    out = judges.cached_scores(judge, cache, [(PROMPT, "Apple"), (PROMPT, "Fig"), (PROMPT, "Apple")])
    assert [j.value for j in out] == [5.0, 3.0, 5.0]
    posts = [r for r in StubOpenAI.requests if r["path"].endswith("/chat/completions")]
    assert len(posts) == 2 and {p["model"] for p in posts} == {"stub-judge"}
    assert {p["temperature"] for p in posts} == {0.0} and {p["max_tokens"] for p in posts} == {32}
    assert posts[0]["messages"][0] == {"role": "system", "content": judges.SINGLE_SYSTEM_PROMPT}
    # a rerun in a new process finds every judgment cached: not one request
    StubOpenAI.requests = []
    again = judges.load_judge(f"llm:{stub_server}", judge_args)
    judges.cached_scores(again, JudgmentCache(tmp_path / "j.jsonl"), [(PROMPT, "Apple"), (PROMPT, "Fig")])
    assert StubOpenAI.requests == []
    named = judges.load_judge(f"llm:other-model@{stub_server}", judge_args)
    assert judges.cached_scores(named, None, [(PROMPT, "Kiwi")])[0].value == 4.0
    assert [r["model"] for r in StubOpenAI.requests] == ["other-model"]


def test_llm_judge_against_a_real_transformers_serve(tiny_model_dir, tmp_path):
    """llm:<url> of a `transformers serve` for the tiny Llama (the generation layer's serve()): the model name comes
    from GET /models; the random model's answers are unparseable, and counted as such, not a crash."""
    from chatalign.servers import free_ports, serve

    server_args = GenerationArguments(backend="server", engine="transformers", server_ports=free_ports(1),
                                      server_start_timeout=180)
    with serve(str(tiny_model_dir), server_args) as endpoints:
        url = list(endpoints)[0]
        judge = judges.load_judge(f"llm:{url}", judges.JudgeArguments(judge_max_tokens=8, judge_parallel=2))
        cache = JudgmentCache(tmp_path / "j.jsonl")
        ranking = pairs.rank_prompts([(PROMPT, ["Apple.", "A car.", "Pear."], None)], judge, cache)[0]
    assert judge.name.startswith(f"llm:{url}|prompts:")
    assert (ranking.status, ranking.unparseable) == (pairs.DROP_TOO_FEW, 3)
    assert cache.paid == 3 and all(isinstance(row["raw"], str) for row in cache.store.rows())


# --------------------------------------------------------------------------------------------------------------------
# judge_dataset.py


def quality(text: str) -> int:
    return {"great": 9, "good": 7, "okay": 5, "poor": 2}.get(text.split()[0].lower(), 0)


def single_judge(messages):
    score = quality(reply_in(messages))
    return f"Rating: [[{score}]]" if score else "I cannot rate this."


def pair_judge(messages):
    content = messages[-1]["content"]
    a = re.search(r"\[Reply A\]\n(.*)\n\[End of reply A\]", content, re.S).group(1)
    b = re.search(r"\[Reply B\]\n(.*)\n\[End of reply B\]", content, re.S).group(1)
    if not quality(a) or not quality(b):
        return "unsure"
    if quality(a) == quality(b) or "biased" in a + b:
        return "[[A]]"  # equal, or a position-biased call: always the first shown
    return "[[A]]" if quality(a) > quality(b) else "[[B]]"


# (chosen, rejected): single -> agree, agree, disagree, tie, unparseable, agree
#                     all    -> agree, agree, disagree, tie (A then A), unparseable, tie (position-biased)
HANDMADE = [("Great answer.", "Poor answer."), ("Good answer.", "Okay answer."), ("Poor answer.", "Good answer."),
            ("Okay one.", "Okay two."), ("Weird answer.", "Good answer."), ("Great biased.", "Okay biased.")]


@pytest.fixture
def handmade_prefs(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}],
             "prompt_id": f"q{i}", "score_chosen": 8.0, "score_rejected": 4.0} for i, (c, r) in enumerate(HANDMADE)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_judge_dataset_single_mode_agreement(handmade_prefs, tmp_path, capsys):
    script = load_script("judge_dataset")
    out = tmp_path / "single.csv"
    argv = ["--dset_name", str(handmade_prefs), "--judge_model", "stub", "--eval_mode", "single",
            "--num_to_judge", "-1", "--output_path", str(out)]
    judge = LLMJudge.from_callable(single_judge, "stub")
    summary = script.main(argv, judge=judge)
    assert {k: summary[k] for k in ("rows", "agree", "disagree", "tie", "unparseable")} == {
        "rows": 6, "agree": 3, "disagree": 1, "tie": 1, "unparseable": 1}
    assert summary["agreement_rate"] == pytest.approx(3 / 5) and summary["agreement_over_all_rows"] == 0.5
    # 12 responses, "Okay ..." texts differ, so every one is judged
    assert judge.calls == 12 and summary["judge_calls"] == 12
    printed = capsys.readouterr().out
    assert "\nagree               3    50.0%\nd" in printed
    assert "agreement with the original labels: 60.0% of 5 parseable rows (50.0% of all 6)" in printed
    rows = read_csv(out)
    assert [r["verdict"] for r in rows] == ["agree", "agree", "disagree", "tie", "unparseable", "agree"]
    assert (rows[0]["new_score_chosen"], rows[0]["new_score_rejected"]) == ("9.0", "2.0")
    assert rows[4]["new_score_chosen"] == "" and rows[4]["judge_output_chosen"] == "I cannot rate this."
    assert rows[0]["prompt"] == "User: Question 0?" and rows[0]["orig_score_chosen"] == "8.0"
    # rerun: resumed from the work folder, nothing paid again, the same CSV
    again = LLMJudge.from_callable(single_judge, "stub")
    assert script.main(argv, judge=again)["judge_calls"] == 0 and again.calls == 0
    assert read_csv(out) == rows


def test_judge_dataset_all_mode_cancels_position_bias(handmade_prefs, tmp_path, capsys):
    script = load_script("judge_dataset")
    out = tmp_path / "all.csv"
    judge = LLMJudge.from_callable(pair_judge, "stub")
    summary = script.main(["--dset_name", str(handmade_prefs), "--judge_model", "stub", "--eval_mode", "all",
                           "--num_to_judge", "5", "--output_path", str(out)], judge=judge)
    assert {k: summary[k] for k in ("rows", "agree", "disagree", "tie", "unparseable", "position_inconsistent")} == {
        "rows": 5, "agree": 2, "disagree": 1, "tie": 1, "unparseable": 1, "position_inconsistent": 1}
    assert judge.calls == 10  # 5 rows x 2 orders
    rows = read_csv(out)
    assert [r["verdict"] for r in rows] == ["agree", "agree", "disagree", "tie", "unparseable"]
    assert [(r["verdict_chosen_first"], r["verdict_rejected_first"]) for r in rows[:4]] == [
        ("A", "B"), ("A", "B"), ("B", "A"), ("A", "A")]
    assert rows[3]["p_chosen"] == "0.5" and rows[3]["position_consistent"] == "False"
    assert "position-inconsistent (the two orders named different winners): 1" in capsys.readouterr().out
    # the sixth row: a judge always naming the first reply lands on a tie
    biased = judges.annotate_pairs([json.loads(line) for line in handmade_prefs.read_text().splitlines()][5:],
                                   judge, None, "all")
    assert biased[0]["verdict"] == "tie"


def test_annotate_pairs_needs_the_right_kind_of_judge():
    row = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="eval_mode all needs a judge that compares"):
        judges.annotate_pairs([row], length_judge(), None, "all")
    with pytest.raises(ValueError, match="eval_mode must be one of single, all"):
        judges.annotate_pairs([row], length_judge(), None, "both")
