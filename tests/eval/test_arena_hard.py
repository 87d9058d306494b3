"""chatalign.eval.arena_hard and the run/show scripts: verdicts as upstream parses them, v0.1's fit against a plain
computation (every battle is against the baseline, so the fitted score is the weighted win rate), v2.0's per-vote
bootstrap, style control, both layouts, and a judged run end to end through a stub judge."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import load_script
from helpers.chat_stub import Stub, read_jsonl

from chatalign.eval import arena_hard as ah

LABELS = ["A>>B", "A>B", "A=B", "B>A", "B>>A", None, "A>>>B"]


def random_rows(count=200, seed=0, category=ah.V01, model="m"):
    rng = random.Random(seed)
    return [{"id": i, "model": model, "category": category, "scores": [rng.choice(LABELS), rng.choice(LABELS)]}
            for i in range(count)]


def weighted_win_rate(rows):
    """The model's share of battles (>> counting 3, a tie half), game 1 showing the baseline as A: plain counting."""
    won = total = 0.0
    for row in rows:
        for game, label in enumerate(row["scores"]):
            if label not in ("A>>B", "A>B", "A=B", "B>A", "B>>A"):
                continue
            weight = 3 if ">>" in label else 1
            model_is_a = game == 1
            if label == "A=B":
                won += 0.5
            elif (label.startswith("A") and label[1] == ">") == model_is_a:
                won += weight
            total += weight
    return 100 * won / total


def test_v01_fit_is_the_weighted_win_rate_against_the_baseline():
    rows = random_rows()
    scores = ah.scores_v01(ah.battles_v01(rows, "gpt-4-0314"), "gpt-4-0314")
    assert list(scores) == ["m"]
    assert scores["m"]["score"] == pytest.approx(weighted_win_rate(rows), abs=0.006)  # upstream rounds to 2 decimals
    assert scores["m"]["lower"] < scores["m"]["score"] < scores["m"]["upper"]
    assert ah.scores_v01(ah.battles_v01(rows, "gpt-4-0314"), "gpt-4-0314") == scores  # seeded: the same again


def test_verdicts_as_upstream_parses_them():
    v01_patterns = ah.judge_settings(ah.V01)["patterns"]
    assert ah.parse_verdict(ah.V01, "so [[A>B]].", v01_patterns) == ("A>B", False)
    assert ah.parse_verdict(ah.V01, "[[A>B]] or [[B>A]]", v01_patterns) == (None, False)  # two labels: unparsed
    assert ah.parse_verdict(ah.V01, "[[A>B]] and again [[A>B]]", v01_patterns) == ("A>B", False)
    assert ah.parse_verdict(ah.V01, "no label", v01_patterns) == (None, True)  # one more try
    v2_patterns = ah.judge_settings(ah.V2)["patterns"]
    assert ah.parse_verdict(ah.V2, "[[a>b]] then [[B>>A]]", v2_patterns) == ("B>>A", False)  # last, upper-cased
    assert ah.parse_verdict(ah.V2, "verdict [A=B]", v2_patterns) == ("A=B", False)
    assert ah.parse_verdict(ah.V2, "no label", v2_patterns) == (None, False)


def test_v2_votes_and_bootstrap():
    rows = [{"id": 1, "model": "org/m", "category": "hard_prompt", "scores": ["A>>B", "B>>A"]},  # baseline wins both
            {"id": 2, "model": "org/m", "category": "hard_prompt", "scores": ["B>A", "A=B"]},
            {"id": 3, "model": "org/m", "category": "hard_prompt", "scores": ["A>B", None]}]  # dropped whole
    votes = ah.votes_v2(rows)
    assert [v["score"] for v in votes] == [0.0] * 6 + [0.5, 1.0] and {v["model"] for v in votes} == {"m"}
    ties = ah.votes_v2([{"id": i, "model": "m", "category": "c", "scores": ["A=B", "A=B"]} for i in range(20)])
    assert ah.scores_v2(ties, "o3")["m"] == {"score": 50.0, "lower": 50.0, "upper": 50.0, "votes": 40}
    many = ah.votes_v2(random_rows(300, category="hard_prompt"))
    scores = ah.scores_v2(many, "o3")["m"]
    assert scores["score"] == pytest.approx(100 * np.mean([v["score"] for v in many]), abs=1.0)
    assert scores["lower"] < scores["score"] < scores["upper"]


def test_style_control_removes_an_advantage_that_is_only_length():
    rng = np.random.default_rng(0)
    votes, features = [], []
    for model, mean_length in (("long", 0.3), ("short", -0.3)):  # neither is better but for its answers' length
        for i in range(400):
            length = rng.normal(mean_length, 0.2)
            won = rng.uniform() < 1 / (1 + np.exp(-5 * length))
            votes.append({"id": i, "model": model, "category": "hard_prompt", "score": float(won)})
            features.append([length, *rng.normal(size=3) * 0.1])
    raw = ah.scores_v2(votes, "base")
    styled = ah.style_controlled_v2(votes, features, "base", ["length"])
    assert raw["long"]["score"] - raw["short"]["score"] > 40
    assert abs(styled["long"]["score"] - styled["short"]["score"]) < 10
    assert styled["_style_coefficients"]["length"] > 1


def test_fit_bt_is_the_minimum_of_the_logistic_loss():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    design = rng.normal(size=(300, 3)).astype(np.float32)
    outcomes = (rng.uniform(size=300) < 1 / (1 + np.exp(-design @ [1.0, -0.5, 0.2]))).astype(np.float32)
    import torch

    ours = ah._fit_bt(torch.tensor(design), torch.tensor(outcomes)).numpy()

    def loss(w):
        z = design @ w
        return np.sum(np.logaddexp(0, z) - outcomes * z)

    reference = minimize(loss, np.full(3, 0.5), method="BFGS").x
    assert ours == pytest.approx(reference, abs=1e-2)  # upstream stops LBFGS after 50 iterations at lr 0.1


def test_answer_metadata_reproduces_upstreams_markdown_counts():
    _, answers = ah.load_answers(ah.bench_dir(ah.V2) / "model_answer" / "o3-mini-2025-01-31.jsonl")
    assert len(answers) == 750
    for row in answers.values():
        ours = ah.answer_metadata(ah.answer_text(row))
        assert {k: v for k, v in ours.items() if k != "token_len"} == {
            k: v for k, v in row["metadata"].items() if k != "token_len"}


def test_shipped_settings_and_both_judgment_layouts(tmp_path):
    v01, v2 = ah.judge_settings(ah.V01), ah.judge_settings(ah.V2)
    assert v01["categories"][ah.V01]["system_prompt"] == v2["categories"]["arena-hard-v0.1"]["system_prompt"]
    assert (v01["max_tokens"], v2["max_tokens"], v01["attempts"]) == (4096, 16000, 2)
    assert len(ah.load_questions(ah.V01)) == 500 and len(ah.load_questions(ah.V2)) == 750
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"question_id": "q", "model": "m", "judge": "j",
                                  "games": [{"score": "A>B"}, {"score": None}]}) + "\n")
    current = tmp_path / "current.jsonl"
    current.write_text(json.dumps({"uid": "u", "model": "m", "judge": "j", "category": "math", "baseline": "o3",
                                   "games": [{"score": "B>A"}, {"score": "A=B"}]}) + "\n")
    rows, judge = ah.load_judgments([legacy, current])
    assert judge == "j" and [r["scores"] for r in rows] == [["A>B", None], ["B>A", "A=B"]]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"uid": "u", "model": "m", "judge": "k", "games": [{}, {}]}) + "\n")
    with pytest.raises(ValueError, match="never mixes judges"):
        ah.load_judgments([current, other])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"uid": "u", "model": "m", "games": [{}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl row 0: needs .* two 'games'"):
        ah.load_judgments([bad])


# --------------------------------------------------------------------------------------------------------------------
# The scripts, judged by a stub


def run(argv):
    return load_script("run_arena_hard").main(argv, confirm=lambda _: pytest.fail("a loopback judge is not confirmed"))


def base_argv(tmp_path, model_dir, url, *extra):
    return ["--model_path", str(model_dir), "--model_id", "tiny", "--bench_dir", str(tmp_path / "ah"),
            "--first_n", "3", "--gen_max_tokens", "8", "--backend", "transformers", "--judge_model", "stub",
            "--judge_base_url", url, "--max_retries", "0", "--result_save_path", str(tmp_path / "summary.json"),
            *extra]


def answers_in(body) -> tuple[str, str]:
    prompt = body["messages"][1]["content"]
    a = prompt.split("<|The Start of Assistant A's Answer|>\n", 1)[1].split("\n<|The End of Assistant A's Answer|>")[0]
    b = prompt.split("<|The Start of Assistant B's Answer|>\n", 1)[1].split("\n<|The End of Assistant B's Answer|>")[0]
    return a, b


def v01_judge(body):
    """Game 1 (the baseline, whose answers are the longer, as A): the baseline slightly better; game 2: a tie. For
    the first question's game 1 no label at first, then one when asked to continue."""
    if body["messages"][-1]["content"] == ah.RETRY_PROMPT:
        return "Final verdict: [[A=B]]"
    a, b = answers_in(body)
    if len(a) > len(b):
        return "I cannot decide yet." if "ABC notation" in body["messages"][1]["content"] else "[[A>B]]"
    return "[[A=B]]"


def test_v01_run_writes_upstreams_layout_and_scores_by_its_procedure(tmp_path, tiny_model_dir, capsys):
    with Stub(content=v01_judge) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url))
        assert len(stub.requests) == 3 * 2 + 1  # both games of 3 questions, one retry
        rows = read_jsonl(tmp_path / "ah" / ah.V01 / "model_judgment" / "stub" / "tiny.jsonl")
        assert [r["question_id"] for r in rows] == [q["id"] for q in ah.load_questions(ah.V01)[:3]]
        assert {r["judge_model_id"] for r in rows} == {"stub"}  # the model id the API answered with
        retried = rows[0]["games"][0]
        assert retried["judgment"] == "\nI cannot decide yet.\nFinal verdict: [[A=B]]" and retried["score"] == "A=B"
        answers = read_jsonl(tmp_path / "ah" / ah.V01 / "model_answer" / "tiny.jsonl")
        assert answers[0]["model_id"] == "tiny" and "turns" in answers[0]["choices"][0]
        # battles: 2 of "baseline slightly better", 4 ties -> the model's weighted win rate is (0 + 4 * 0.5) / 6
        (result,) = summary["runs"]
        assert result["categories"][ah.V01]["score"] == pytest.approx(100 * 2 / 6, abs=0.006)
        assert summary["baselines"] == {ah.V01: "gpt-4-0314"} and summary["judge"] == "stub"
        again = run(base_argv(tmp_path, tiny_model_dir, stub.url))
        assert len(stub.requests) == 7 and again["judge_calls_this_run"] == 0
    show = load_script("show_arena_hard_result")
    capsys.readouterr()
    document = show.main(["--judgment_dir", str(tmp_path / "ah" / ah.V01 / "model_judgment"), "--judge_name", "stub",
                          "--format", "json", "--plot_path", str(tmp_path / "ah.png")])
    assert json.loads(capsys.readouterr().out) == document
    assert document["bench"] == ah.V01 and document["categories"][ah.V01]["tiny"]["score"] == pytest.approx(
        result["categories"][ah.V01]["score"])
    assert document["categories"][ah.V01]["tiny"]["avg_tokens"] is None  # cl100k_base cannot load offline
    assert (tmp_path / "ah.png").stat().st_size > 1000


def model_always_better(body):
    a, b = answers_in(body)
    return "[[A>B]]" if len(a) < len(b) else "[[B>A]]"  # the tiny model's 8-token answer is the shorter one


def test_v2_run_scores_each_category_against_its_baseline(tmp_path, tiny_model_dir, capsys):
    with Stub(content=model_always_better) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url, "--bench", ah.V2, "--style_control", "length"))
        assert len(stub.requests) == 6 and stub.requests[0]["max_tokens"] == 16000
    rows = read_jsonl(tmp_path / "ah" / ah.V2 / "model_judgment" / "stub" / "tiny.jsonl")
    assert {r["baseline"] for r in rows} == {"o3-mini-2025-01-31"} and rows[0]["games"][0]["prompt"][0]["role"] == "system"
    (result,) = summary["runs"]
    assert result["categories"]["hard_prompt"] == {"score": 100.0, "lower": 100.0, "upper": 100.0, "votes": 6}
    assert "tiktoken" in result["style_controlled"]["hard_prompt"]["unavailable"]  # no gpt-4o tokenizer offline
    answers = read_jsonl(tmp_path / "ah" / ah.V2 / "model_answer" / "tiny.jsonl")
    assert answers[0]["messages"][1]["content"]["answer"] and answers[0]["metadata"]["token_len"] is None
    show = load_script("show_arena_hard_result")
    capsys.readouterr()
    document = show.main(["--judgment_dir", str(tmp_path / "ah" / ah.V2 / "model_judgment" / "stub"),
                          "--format", "json"])
    assert document["bench"] == ah.V2 and document["categories"]["hard_prompt"]["tiny"]["score"] == 100.0


def test_num_runs_and_judge_only(tmp_path, tiny_model_dir):
    with Stub(content=model_always_better) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url, "--bench", ah.V2, "--num_runs", "2"))
        assert len(stub.requests) == 6  # greedy answers repeat, so run 2's games come from the cache: none paid twice
        first = read_jsonl(tmp_path / "ah" / "run1" / ah.V2 / "model_answer" / "tiny.jsonl")
        second = read_jsonl(tmp_path / "ah" / "run2" / ah.V2 / "model_judgment" / "stub" / "tiny.jsonl")
        assert len(first) == 3 and len(second) == 3 and len(summary["runs"]) == 2
        assert summary["over_runs"]["hard_prompt"] == {"mean": 100.0, "std": 0.0, "median": 100.0, "runs": 2}
        again = run(base_argv(tmp_path, tiny_model_dir, stub.url, "--bench", ah.V2, "--num_runs", "2",
                              "--judge_only", "true"))
        assert again["judge_calls_this_run"] == 0 and again["over_runs"] == summary["over_runs"]


def test_a_category_without_its_baselines_answers_fails_before_any_work(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="no answers of its baseline gemini-2.0-flash-001"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--bench", ah.V2, "--categories",
                      "hard_prompt", "creative_writing"))
    with pytest.raises(ValueError, match="unknown category 'poetry'"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--bench", ah.V2, "--categories", "poetry"))
    with pytest.raises(ValueError, match="arena-hard-v2.0 options"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--style_control", "length"))
    with pytest.raises(FileNotFoundError, match="--judge_only: no answers"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--judge_only", "true"))
    assert not (tmp_path / "ah").exists()
