"""scripts/run_mt_bench.py over chatalign.eval.mt_bench_run: the tiny model's answers in FastChat's layout, judged
over HTTP (a stub that writes ratings; a real `transformers serve`) and in process by logprobs; FastChat's own
show_result.py reads what was written; reruns resume; --num_runs, --judge_only; bad answer files named."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from conftest import load_script
from helpers.chat_stub import Stub, read_jsonl
from helpers.counting_proxy import CountingProxy
from helpers.fastchat import fastchat_show_result

from chatalign.eval import mt_bench

FIRST_N = 4  # writing questions 81-84 (temperature 0.7): quick with the tiny model


def rating_for(body) -> str:
    """A judge that rates turn 1 by the question's number and writes no rating for question 84's second turn."""
    prompt = body["messages"][-1]["content"]
    second = "<|The Start of Assistant A's Conversation with User|>" in prompt
    number = next(i for i, q in enumerate(mt_bench.load_questions(mt_bench.MT_BENCH_DIR / "question.jsonl"))
                  if q["turns"][0] in prompt)
    if second and number == 3:
        return "I cannot rate this."
    return f"Explanation. Rating: [[{number + 5 if not second else 2}]]"


def run(argv, confirm=lambda _: pytest.fail("a loopback judge is never confirmed")):
    return load_script("run_mt_bench").main(argv, confirm=confirm)


def base_argv(tmp_path, model_dir, url, *extra):
    return ["--model_path", str(model_dir), "--model_id", "tiny", "--bench_dir", str(tmp_path / "bench"),
            "--first_n", str(FIRST_N), "--gen_max_tokens", "8", "--backend", "transformers",
            "--judge_model", "stub", "--judge_base_url", url, "--judge_parallel", "2", "--max_retries", "0",
            "--result_save_path", str(tmp_path / "summary.json"), *extra]


def test_answers_judgments_and_scores_in_fastchats_layout(tmp_path, tiny_model_dir):
    with Stub(content=rating_for) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url))
        assert len(stub.requests) == 2 * FIRST_N
        answers = read_jsonl(tmp_path / "bench" / "model_answer" / "tiny.jsonl")
        assert [a["question_id"] for a in answers] == [81, 82, 83, 84]
        assert all(a["model_id"] == "tiny" and len(a["choices"][0]["turns"]) == 2 for a in answers)
        judgment_file = tmp_path / "bench" / "model_judgment" / "stub_single.jsonl"
        rows = read_jsonl(judgment_file)
        assert sorted((r["question_id"], r["turn"], r["score"]) for r in rows) == [
            (81, 1, 5), (81, 2, 2), (82, 1, 6), (82, 2, 2), (83, 1, 7), (83, 2, 2), (84, 1, 8), (84, 2, -1)]
        assert {tuple(r["judge"]) for r in rows} == {("stub", "single-v1"), ("stub", "single-v1-multi-turn")}
        assert {r["judge_model_id"] for r in rows} == {"stub"} and all(r["judgment_date"] for r in rows)

        (scores,) = summary["runs"]
        assert (scores["turn_1"], scores["turn_2"]) == (6.5, 2.0) and scores["unparseable"] == 1
        assert scores["average"] == pytest.approx((5 + 6 + 7 + 8 + 2 + 2 + 2) / 7)  # over rows, not turn means
        fastchat = fastchat_show_result(judgment_file)
        assert fastchat["First turn"]["tiny"] == pytest.approx(6.5)
        assert fastchat["Second turn"]["tiny"] == pytest.approx(2.0)
        assert fastchat["Average"]["tiny"] == pytest.approx(scores["average"], abs=1e-6)
        assert summary["judge"] == "stub" and summary["judge_model_id"] == ["stub"]
        assert re.fullmatch(r"fastchat-0\.2\.36:[0-9a-f]{12}", summary["prompt_version"])
        assert json.loads((tmp_path / "summary.json").read_text()) == summary

        again = run(base_argv(tmp_path, tiny_model_dir, stub.url))  # a rerun generates and pays for nothing
        assert len(stub.requests) == 2 * FIRST_N and again["judge_calls_this_run"] == 0
    assert read_jsonl(tmp_path / "bench" / "model_answer" / "tiny.jsonl")[0]["choices"] == answers[0]["choices"]


def test_num_runs_writes_a_bench_folder_per_run_and_summarises_them(tmp_path, tiny_model_dir):
    with Stub(content=rating_for) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url, "--num_runs", "2"))
    first, second = (read_jsonl(tmp_path / "bench" / f"run{k}" / "model_answer" / "tiny.jsonl") for k in (1, 2))
    assert first[0]["choices"] != second[0]["choices"]  # run k samples with seed + k - 1
    assert first[0]["choices"][0]["turns"][0] != first[0]["choices"][0]["turns"][1]
    assert len(summary["runs"]) == 2 and summary["files"][1].endswith("run2")
    averages = [r["average"] for r in summary["runs"]]
    over = summary["over_runs"]["average"]
    assert over["mean"] == pytest.approx(statistics.mean(averages)) and over["runs"] == 2
    assert over["std"] == pytest.approx(statistics.stdev(averages))
    assert summary["categories_over_runs"]["writing"]["mean"] == pytest.approx(statistics.mean(averages))


def test_judge_only_judges_existing_answers_and_names_a_missing_question(tmp_path, tiny_model_dir):
    with Stub(content=rating_for) as stub:
        run(base_argv(tmp_path, tiny_model_dir, stub.url))
        answer_file = tmp_path / "bench" / "model_answer" / "tiny.jsonl"
        answer_file.write_text("\n".join(answer_file.read_text().splitlines()[:3]) + "\n")  # question 84 is gone
        judge_only = ["--judge_only", "true", "--model_path", str(tmp_path / "not-there")]
        with pytest.raises(ValueError, match=r"tiny\.jsonl.*84"):
            run(base_argv(tmp_path, tiny_model_dir, stub.url, *judge_only))
        with pytest.raises(FileNotFoundError, match="no answers at"):
            run(base_argv(tmp_path, tiny_model_dir, stub.url, *judge_only, "--model_id", "other"))
        assert len(stub.requests) == 2 * FIRST_N


def test_a_real_transformers_serve_judge_whose_verdicts_do_not_parse(tmp_path, tiny_model_dir, served_tiny_judge):
    url, model = served_tiny_judge
    with CountingProxy(url) as proxy:
        argv = base_argv(tmp_path, tiny_model_dir, proxy.url, "--judge_model", model, "--judge_engine",
                         "transformers", "--judge_max_tokens", "8", "--first_n", "2")
        summary = run(argv)
        assert proxy.chat_requests == 4
    (scores,) = summary["runs"]
    assert scores["unparseable"] == 4 and scores["average"] is None  # missing, not a number made up
    rows = read_jsonl(tmp_path / "bench" / "model_judgment" / f"{model.rsplit('/', 1)[-1]}_single.jsonl")
    assert [r["score"] for r in rows] == [-1] * 4


def test_logprob_scoring_with_the_local_judge_in_process(tmp_path, tiny_model_dir):
    argv = base_argv(tmp_path, tiny_model_dir, "unused", "--judge_model", str(tiny_model_dir), "--judge_scoring",
                     "logprobs", "--judge_max_tokens", "8", "--first_n", "2")
    argv.remove("--judge_base_url")
    argv.remove("unused")
    summary = run(argv)
    rows = read_jsonl(tmp_path / "bench" / "model_judgment" / f"{tiny_model_dir.name}+logprobs_single.jsonl")
    assert len(rows) == 4 and all(1.0 <= r["score"] <= 10.0 for r in rows)  # never unparseable
    assert all(sum(r["rating_probs"].values()) == pytest.approx(1.0) for r in rows)
    (scores,) = summary["runs"]
    assert scores["unparseable"] == 0 and scores["average"] == pytest.approx(
        statistics.mean(r["score"] for r in rows))
    assert summary["scoring"] == "logprobs" and summary["judge_endpoint"] == "local checkpoint"


def longer_answer_wins(body) -> str:
    """A pairwise judge that prefers the longer of A's and B's blocks (the baseline's, against the tiny model)."""
    prompt = body["messages"][-1]["content"]
    a_start, b_start = prompt.index("Assistant A"), prompt.index("Assistant B")
    return "[[A]]" if b_start - a_start > len(prompt) - b_start else "[[B]]"


def test_pairwise_baseline_games_in_both_orders_as_fastchat_counts_them(tmp_path, tiny_model_dir):
    with Stub(content=longer_answer_wins) as stub:
        summary = run(base_argv(tmp_path, tiny_model_dir, stub.url, "--mode", "pairwise-baseline"))
        assert len(stub.requests) == 2 * 2 * FIRST_N  # two turns, two orders
    pair_file = tmp_path / "bench" / "model_judgment" / "stub_pair.jsonl"
    rows = read_jsonl(pair_file)
    assert len(rows) == 2 * FIRST_N and {(r["model_1"], r["model_2"]) for r in rows} == {("tiny", "gpt-3.5-turbo")}
    assert {(r["g1_winner"], r["g2_winner"]) for r in rows} == {("model_2", "model_2")}  # the baseline, both orders
    (result,) = summary["runs"]
    assert (result["win"], result["loss"], result["tie"], result["win_rate_adjusted"]) == (0, 2 * FIRST_N, 0, 0.0)
    fastchat = fastchat_show_result(pair_file, mode="pairwise-baseline", baseline="gpt-3.5-turbo")
    assert fastchat["tiny"]["loss"] == 2 * FIRST_N and fastchat["tiny"]["win_rate_adjusted"] == 0.0


def test_pairwise_needs_the_baseline_answers_and_written_ratings(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="no answers of the baseline nobody"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--mode", "pairwise-baseline",
                      "--baseline_model", "nobody"))
    with pytest.raises(ValueError, match="logprobs .* mode=single"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--mode", "pairwise-baseline",
                      "--judge_scoring", "logprobs"))
    assert not (tmp_path / "bench").exists()  # nothing generated


def test_to_wandb_needs_a_wandb_run_in_run_args(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match=r"run_args\.yaml names no wandb run"):
        run(base_argv(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "--to_wandb", "true"))
    assert not (tmp_path / "bench").exists()


def test_to_wandb_adds_the_scores_to_the_training_run(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    import yaml

    model = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, model)
    run_args = {"chatalign": {"wandb": {"id": "trainrun1", "project": "chatalign-test", "entity": ""}}, "args": {}}
    (model / "run_args.yaml").write_text(yaml.safe_dump(run_args))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Stub(content=rating_for) as stub:
        summary = run(base_argv(tmp_path, model, stub.url, "--to_wandb", "true", "--first_n", "1"))
    (record,) = (tmp_path / "wandb").glob("offline-run-*-trainrun1/run-trainrun1.wandb")
    logged = record.read_bytes()
    assert b"mt_bench/average" in logged and b"mt_bench/category/writing" in logged
    assert summary["over_runs"]["average"]["mean"] == pytest.approx((5 + 2) / 2)


def test_question_subsets_by_category():
    from chatalign.eval.mt_bench_run import MTBenchArguments, select_questions

    questions = mt_bench.load_questions(mt_bench.MT_BENCH_DIR / "question.jsonl")
    picked = select_questions(MTBenchArguments(model_path="m", per_category=1), questions)
    assert [q["question_id"] for q in picked] == [81, 91, 101, 111, 121, 131, 141, 151]
    picked = select_questions(MTBenchArguments(model_path="m", categories=["stem", "writing"], per_category=2),
                              questions)
    assert [q["question_id"] for q in picked] == [81, 82, 141, 142]
    with pytest.raises(ValueError, match="unknown MT-Bench category poetry"):
        select_questions(MTBenchArguments(model_path="m", categories=["poetry"]), questions)
