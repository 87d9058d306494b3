"""chatalign.eval.mt_bench and scripts/show_mt_bench_result.py against FastChat: the released GPT-4 judgments'
prompts and ratings reproduced, and scores equal to FastChat's own show_result.py (fschat 0.2.36, run here)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, load_script
from helpers.fastchat import fastchat_show_result

from chatalign.eval import mt_bench

SHARED = REPO.parent / "shared" / "data" / "mt_bench"
RELEASED = [SHARED / "model_judgment" / "gpt-4_single.jsonl", SHARED / "model_judgment" / "gpt-4_single_llama3_partial.jsonl"]


def test_shipped_data_is_fastchats():
    questions = mt_bench.load_questions()
    assert len(questions) == 80 and {q["category"] for q in questions} == set(mt_bench.CATEGORIES)
    assert (mt_bench.MT_BENCH_DIR / "question.jsonl").read_bytes() == (SHARED / "question.jsonl").read_bytes()
    prompts = mt_bench.load_judge_prompts()
    assert sorted(prompts) == sorted(name for name, *_ in [*mt_bench.SINGLE_JUDGES.values(),
                                                            *mt_bench.PAIR_JUDGES.values()])
    references = mt_bench.load_answers(mt_bench.MT_BENCH_DIR / "reference_answer" / "gpt-4.jsonl")["gpt-4"]
    assert sorted(references) == [q["question_id"] for q in questions if q["category"] in mt_bench.NEED_REF_CATS]


@pytest.mark.parametrize("released", RELEASED, ids=lambda p: p.name)
def test_prompts_and_ratings_reproduce_the_released_gpt4_judgments(released):
    rows, judge = mt_bench.load_judgments(released)
    assert judge == "gpt-4"
    questions = mt_bench.load_questions()
    answers = mt_bench.load_answers(SHARED / "model_answer")
    references = mt_bench.load_answers(mt_bench.MT_BENCH_DIR / "reference_answer" / "gpt-4.jsonl")["gpt-4"]
    models = sorted({r["model"] for r in rows})
    matches = mt_bench.single_matches(questions, models, answers, mt_bench.load_judge_prompts(), references)
    by_key = {(m["question"]["question_id"], m["model"], m["turn"]): m for m in matches}
    assert len(matches) == 160 * len(models)
    for row in rows:
        match = by_key[(row["question_id"], row["model"], row["turn"])]
        assert match["judge_prompt"] == row["judge"][1]
        assert match["messages"][1]["content"] == row["user_prompt"]  # FastChat's prompt, to the byte
        assert mt_bench.parse_single_rating(row["judgment"]) == row["score"]  # FastChat's rating, -1s included


@pytest.mark.parametrize("released", RELEASED, ids=lambda p: p.name)
def test_scores_equal_fastchats_show_result(released):
    fastchat = fastchat_show_result(released)
    rows, _ = mt_bench.load_judgments(released)
    ours = mt_bench.single_scores(rows, mt_bench.load_questions())
    for model, scores in ours.items():
        # pandas prints 6 decimals (trailing zeros padded in a column)
        assert round(scores["turn_1"], 6) == fastchat["First turn"][model]
        assert round(scores["turn_2"], 6) == fastchat["Second turn"][model]
        assert round(scores["average"], 6) == fastchat["Average"][model]
    assert set(ours) == set(fastchat["Average"])


def test_duplicated_rows_count_as_fastchat_counts_them_unless_dedup():
    rows, _ = mt_bench.load_judgments(RELEASED[1])
    normal = "Meta-Llama-3-8B-Instruct-Normal"
    keys = [(r["question_id"], r["turn"]) for r in rows if r["model"] == normal]
    assert len(keys) == 170 and len(set(keys)) == 160  # ten (question, turn) judged twice
    plain = mt_bench.single_scores(rows)[normal]
    deduped = mt_bench.single_scores(rows, dedup=True)[normal]
    assert plain["rows"] + plain["unparseable"] == 170 and deduped["rows"] + deduped["unparseable"] == 160
    assert plain["average"] != deduped["average"]


def test_pairwise_results_equal_fastchats(tmp_path):
    outcomes = [("model_1", "model_1"), ("model_2", "model_2"), ("model_1", "model_2"), ("tie", "tie"),
                ("model_1", "error"), ("model_2", "model_2"), ("model_1", "model_1"), ("tie", "model_1")]
    rows = []
    for i, (g1, g2) in enumerate(outcomes):
        for other in ("alpha", "beta"):
            rows.append({"question_id": 81 + i, "model_1": other, "model_2": "gpt-3.5-turbo", "g1_winner": g1,
                         "g2_winner": g2, "judge": ["gpt-4", "pair-v2"], "turn": 1})
    rows.append({"question_id": 99, "model_1": "alpha", "model_2": "beta", "g1_winner": "model_2",
                 "g2_winner": "model_2", "judge": ["gpt-4", "pair-v2"], "turn": 1})
    path = tmp_path / "gpt-4_pair.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for mode, baseline in (("pairwise-baseline", "gpt-3.5-turbo"), ("pairwise-all", None)):
        fastchat = fastchat_show_result(path, mode, baseline)
        ours = mt_bench.pair_results(rows, baseline)
        assert set(ours) == set(fastchat)
        for model, row in ours.items():
            for key in ("win", "loss", "tie"):
                assert row[key] == fastchat[model][key]
            assert round(row["win_rate_adjusted"], 6) == pytest.approx(fastchat[model]["win_rate_adjusted"], abs=1e-6)


@pytest.mark.parametrize("text, output_format, winner", [
    ("A is more detailed. [[A]]", "[[A]]", "A"), ("[[B]]", "[[A]]", "B"), ("Equal. [[C]]", "[[A]]", "tie"),
    ("I cannot decide.", "[[A]]", "error"), ("Scores: [[8, 6]]", "[[rating_a,rating_b]]", "A"),
    ("[[7.05, 7]]", "[[rating_a,rating_b]]", "tie"), ("[4.5,9]", "[[rating_a,rating_b]]", "B"),
    ("no scores", "[[rating_a,rating_b]]", "error")])
def test_pair_verdicts_parse_as_fastchat(text, output_format, winner):
    assert mt_bench.parse_pair_winner(text, output_format) == winner


@pytest.mark.parametrize("text, rating", [("Rating: [[7]]", 7), ("[[8.5]] then [[3]]", 8.5), ("score [6]", 6),
                                          ("Rating: 7", -1), ("", -1), (None, -1)])
def test_single_ratings_parse_as_fastchat(text, rating):
    assert mt_bench.parse_single_rating(text) == rating


def test_an_answer_file_missing_a_question_is_named(tmp_path):
    answers = mt_bench.load_answers(SHARED / "model_answer" / "gpt-4.jsonl")
    del answers["gpt-4"][113]
    with pytest.raises(ValueError, match=r"gpt-4.jsonl: model 'gpt-4' has no answer to question 113"):
        mt_bench.check_answers(mt_bench.load_questions(), answers, "model_answer/gpt-4.jsonl")
    with pytest.raises(ValueError, match=r"question 101 \(reasoning\) is judged against a reference answer, and the "
                                         r"reference file has none for it \(--reference_answer_file\)"):
        mt_bench.single_matches(mt_bench.load_questions(), ["gpt-4"], mt_bench.load_answers(
            SHARED / "model_answer"), mt_bench.load_judge_prompts(), references={})


def test_a_judgment_file_never_mixes_judges(tmp_path):
    rows = mt_bench.read_jsonl(RELEASED[0])[:4]
    rows[1]["judge"] = ["gpt-4o", "single-v1"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"mixed.jsonl: rows judged by gpt-4, gpt-4o; a result never mixes judges"):
        mt_bench.load_judgments(mixed)
    rows = mt_bench.read_jsonl(RELEASED[0])[:4]
    for row, served in zip(rows, ["gpt-4-0613", "gpt-4-0613", "gpt-4-0125-preview", None], strict=True):
        row["judge_model_id"] = served  # one name, two models behind it
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"judge gpt-4 answered as gpt-4-0125-preview, gpt-4-0613"):
        mt_bench.load_judgments(mixed)


def test_show_script_table_json_plot_and_runs(tmp_path, capsys):
    script = load_script("show_mt_bench_result")
    document = script.main(["--input_file", str(RELEASED[0]), "--format", "json", "--plot_path",
                            str(tmp_path / "radar.png")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["models"]["claude-3-opus-20240229"]["average"] == pytest.approx(8.675)
    assert printed == json.loads(json.dumps(document)) and printed["judge"] == "gpt-4"
    assert (tmp_path / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two runs: the released one and a copy rated one point lower everywhere.
    rows = mt_bench.read_jsonl(RELEASED[0])
    lower = tmp_path / "run2.jsonl"
    lower.write_text("".join(json.dumps({**r, "score": r["score"] - 1}) + "\n" for r in rows))
    runs = script.main(["--input_file", str(RELEASED[0]), str(lower), "--plot_path", str(tmp_path / "r2.png")])
    sonnet = runs["models"]["claude-3-5-sonnet-20240620"]
    assert sonnet["over_runs"]["average"]["mean"] == pytest.approx(9.20625 - 0.5)
    assert sonnet["over_runs"]["average"]["std"] == pytest.approx(2 ** -0.5)
    assert sonnet["over_runs"]["average"]["median"] == pytest.approx(9.20625 - 0.5)
    table = capsys.readouterr().out
    assert "average (FastChat)" in table and "overall (LION, mean of categories)" in table and "humanities" in table
