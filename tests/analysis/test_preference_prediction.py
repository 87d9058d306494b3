"""chatalign.analysis.preference_prediction and scripts/predict_preference.py: reward-model accuracy against preference
labels (ties wrong), per source and per score-difference bucket, resumable, for reward models and PairRM."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import DATA, build_tiny_classifier, load_script
from judges.test_models import build_tiny_pairrm

from chatalign.analysis.classifier import wilson_interval
from chatalign.analysis.preference_prediction import (
    NO_SCORES,
    PAIRWISE_FIELDS,
    ROW_FIELDS,
    bucket_order,
    score_bucket,
)
from chatalign.judges.models import FunctionJudge, RewardModelJudge
from chatalign.store import pair_id, prompt_id, read_jsonl

# (source, reward of chosen, reward of rejected, score_chosen, score_rejected): the scorer reads "r=<number>".
DESIGNED = [
    ("A", 5, 3, 8.0, 7.5),    # diff 0.5  -> [0,1)      correct
    ("A", 2, 4, 9.0, 6.0),    # diff 3    -> [3,4)      wrong
    ("A", 4, 4, 7.0, 6.0),    # diff 1    -> [1,2)      tie: wrong
    ("B", 6, 1, 10.0, 4.0),   # diff 6    -> >=5        correct
    ("B", 1, 0, None, None),  # no scores               correct
    ("B", 3, 2, 6.0, 6.5),    # diff -0.5 -> <0         correct
    ("A", 7, 2, 5.0, 4.0),    # diff 1    -> [1,2)      correct
    ("B", 0, 9, 3.0, 1.0),    # diff 2    -> [2,3)      wrong
]


def designed_rows():
    return [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"r={c} (answer {i})"}],
             "rejected": [{"role": "assistant", "content": f"r={r} (other {i})"}],
             "score_chosen": sc, "score_rejected": sr, "source": source}
            for i, (source, c, r, sc, sr) in enumerate(DESIGNED)]


@pytest.fixture
def designed_file(tmp_path):
    path = tmp_path / "designed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in designed_rows()))
    return path


def reward_judge(name: str = "designed") -> FunctionJudge:
    return FunctionJudge(name, score=lambda prompt, response: float(re.match(r"r=(\d+)", response).group(1)))


def run(argv, scorer=None):
    return load_script("predict_preference").main(argv, scorer=scorer)


def argv(data, out, *extra):
    return [f"--dataset_name={data}", "--dataset_split=train", f"--output_dir={out}", "--model_name_or_path=unused",
            "--num_samples=-1", *extra]


def test_score_buckets_and_wilson_interval():
    from scipy.stats import binomtest

    assert [score_bucket(d) for d in (-0.5, 0.0, 0.5, 1.0, 4.99, 5.0, 7.0, None)] == \
        ["<0", "[0,1)", "[0,1)", "[1,2)", "[4,5)", ">=5", ">=5", NO_SCORES]
    assert bucket_order(2.0, 5.0) == ["<0", "[0,2)", "[2,4)", "[4,5)", ">=5", NO_SCORES]
    assert score_bucket(4.5, 2.0, 5.0) == "[4,5)"
    for k, n in ((5, 8), (0, 3), (3, 3), (1, 2)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert list(wilson_interval(k, n)) == pytest.approx([ci.low, ci.high], abs=1e-9)


def test_designed_rows_give_exact_accuracy_per_source_and_bucket(tmp_path, designed_file, capsys):
    from scipy.stats import binomtest

    out = tmp_path / "out"
    judge = reward_judge()
    summary = run(argv(designed_file, out), judge)
    assert judge.calls == 16  # two replies per pair
    assert (summary["n"], summary["correct"], summary["ties"], summary["accuracy"]) == (8, 5, 1, 5 / 8)
    ci = binomtest(5, 8).proportion_ci(method="wilson")
    assert summary["interval"] == pytest.approx([ci.low, ci.high])
    assert {s: (g["n"], g["correct"], g["ties"]) for s, g in summary["per_source"].items()} == \
        {"A": (4, 2, 1), "B": (4, 3, 0)}
    buckets = {b: (g["n"], g["correct"], g["ties"]) for b, g in summary["per_bucket"].items()}
    assert buckets == {"<0": (1, 1, 0), "[0,1)": (1, 1, 0), "[1,2)": (2, 1, 1), "[2,3)": (1, 0, 0),
                       "[3,4)": (1, 0, 0), ">=5": (1, 1, 0), NO_SCORES: (1, 1, 0)}
    assert list(buckets) == [b for b in bucket_order() if b in buckets]  # in bucket order, empty [4,5) left out
    assert summary["per_bucket"]["[1,2)"]["accuracy"] == 0.5
    assert (summary["model_type"], summary["scorer"], summary["rows"], summary["unscored"]) == \
        ("reward_model", "designed", 8, 0)

    # summary.json is what main returned; the per-pair file has the documented schema, in dataset order
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    predictions = read_jsonl(out / "reward_predictions.jsonl")
    assert [list(p) for p in predictions] == [list(ROW_FIELDS)] * 8
    for i, (p, row, (source, c, r, sc, sr)) in enumerate(zip(predictions, designed_rows(), DESIGNED, strict=True)):
        assert p["pair_id"] == pair_id(row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"])
        assert p["prompt_id"] == prompt_id(row["prompt"])
        assert (p["row"], p["source"], p["reward_chosen"], p["reward_rejected"], p["margin"]) == (i, source, c, r, c - r)
        assert (p["correct"], p["tie"]) == (c > r, c == r)
        assert (p["score_chosen"], p["score_rejected"]) == (sc, sr)
        assert p["score_diff"] == (None if sc is None else sc - sr)
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "run_args.yaml").is_file()
    table = capsys.readouterr().out
    assert "overall" in table and "source A" in table and "score diff no scores" in table and "62.5" in table


def test_resumes_a_partial_run_and_a_rerun_scores_nothing(tmp_path, designed_file):
    out = tmp_path / "out"
    first = reward_judge()
    partial = run(argv(designed_file, out, "--num_samples=3"), first)
    assert (first.calls, partial["n"], partial["correct"]) == (6, 3, 1)
    assert len(read_jsonl(out / "work" / "scored_pairs.jsonl")) == 3
    second = reward_judge()
    full = run(argv(designed_file, out), second)
    assert (second.calls, full["computed_this_run"], full["accuracy"]) == (10, 5, 5 / 8)  # only the 5 new pairs
    third = reward_judge()
    again = run(argv(designed_file, out), third)
    assert third.calls == 0 and again["computed_this_run"] == 0
    assert {k: v for k, v in again.items() if k != "computed_this_run"} == \
        {k: v for k, v in full.items() if k != "computed_this_run"}
    # Another scorer's rewards are never mixed in: an error naming the resume file
    with pytest.raises(ValueError, match=r"scored_pairs\.jsonl holds rewards of designed, not of this run's other"):
        run(argv(designed_file, out), reward_judge("other"))


def test_pairwise_scorer_averages_both_orders_so_position_bias_cancels(tmp_path, designed_file):
    always_first = FunctionJudge("first", compare=lambda prompt, a, b: 1.0)
    both = run(argv(designed_file, tmp_path / "both"), always_first)
    assert (both["model_type"], both["ties"], both["correct"], both["accuracy"]) == ("pairrm", 8, 0, 0.0)
    one = run(argv(designed_file, tmp_path / "one", "--pairrm_both_orders=false"),
              FunctionJudge("first", compare=lambda prompt, a, b: 1.0))
    assert (one["ties"], one["accuracy"], one["scorer"]) == (0, 1.0, "first|orders:chosen_first")

    def number(text):
        return int(re.match(r"r=(\d+)", text).group(1))

    # P(a better) = 0.9 when a's number is higher, else 0.2: p = (first + 1 - second) / 2 per pair
    judge = FunctionJudge("graded", compare=lambda prompt, a, b: 0.9 if number(a) > number(b) else 0.2)
    graded = run(argv(designed_file, tmp_path / "graded"), judge)
    assert judge.calls == 16
    predictions = read_jsonl(tmp_path / "graded" / "reward_predictions.jsonl")
    assert [list(p) for p in predictions] == [[*ROW_FIELDS, *PAIRWISE_FIELDS]] * 8
    for p, (_, c, r, _, _) in zip(predictions, DESIGNED, strict=True):
        first, second = (0.9, 0.2) if c > r else (0.2, 0.9) if c < r else (0.2, 0.2)
        assert (p["p_chosen_first"], p["p_rejected_first"]) == (first, second)
        assert p["reward_chosen"] == pytest.approx((first + 1 - second) / 2)
        assert p["reward_rejected"] == pytest.approx(1 - p["reward_chosen"])
        assert p["correct"] == (c > r)
    assert (graded["correct"], graded["ties"]) == (5, 1)  # the equal pair: 0.2 both ways -> p = 0.5, a tie
    with pytest.raises(ValueError, match="model_type reward_model: scorer graded cannot score a reply alone"):
        run(argv(designed_file, tmp_path / "wrong", "--model_type=reward_model"), judge)


def test_tiny_reward_model_checkpoint_by_path(tmp_path, designed_file, tiny_tokenizer, monkeypatch):
    model_dir = build_tiny_classifier(tmp_path / "rm", tiny_tokenizer)
    out = tmp_path / "out"
    args = argv(designed_file, out, "--batch_size=3")
    args[3] = f"--model_name_or_path={model_dir}"
    summary = run(args)
    assert summary["model_type"] == "reward_model" and summary["n"] == 8
    assert summary["scorer"] == f"reward_model:{model_dir.resolve()}|max_length:2048"
    rows = designed_rows()
    expected = RewardModelJudge(str(model_dir)).score_batch([(r["prompt"], r[k][0]["content"]) for r in rows
                                                             for k in ("chosen", "rejected")])
    predictions = read_jsonl(out / "reward_predictions.jsonl")
    assert [p["reward_chosen"] for p in predictions] == pytest.approx([j.value for j in expected[0::2]], abs=1e-5)
    assert [p["reward_rejected"] for p in predictions] == pytest.approx([j.value for j in expected[1::2]], abs=1e-5)
    assert [p["correct"] for p in predictions] == [p["reward_chosen"] > p["reward_rejected"] for p in predictions]
    assert summary["accuracy"] == sum(p["correct"] for p in predictions) / 8
    # A rerun loads and runs nothing
    monkeypatch.setattr(RewardModelJudge, "score_batch", lambda *a: pytest.fail("scored again"))
    monkeypatch.setattr("chatalign.judges.models._SequenceClassifier.load", lambda self: pytest.fail("loaded"))
    assert run(args)["accuracy"] == summary["accuracy"]


def test_checkpoint_without_a_trained_head_is_an_error_before_scoring(tmp_path, designed_file, tiny_model_dir):
    out = tmp_path / "out"
    args = argv(designed_file, out)
    args[3] = f"--model_name_or_path={tiny_model_dir}"  # a causal LM: its score head would be random numbers
    with pytest.raises(ValueError, match=r"\['score\.weight'\] did not load: it has no trained score head"):
        run(args)
    assert not (out / "work" / "scored_pairs.jsonl").exists() and not (out / "summary.json").exists()


def test_tiny_pairrm_checkpoint_is_detected_and_compared_in_both_orders(tmp_path, designed_file, tiny_tokenizer):
    from chatalign.judges.pairrm import load_pairrm, pairrm_logits

    model_dir = build_tiny_pairrm(tmp_path / "pairrm", tiny_tokenizer)
    out = tmp_path / "out"
    args = argv(designed_file, out)
    args[3] = f"--model_name_or_path={model_dir}"
    summary = run(args)
    assert summary["model_type"] == "pairrm" and summary["n"] == 8 and summary["pairrm_both_orders"] is True
    assert summary["scorer"] == f"pairrm:{model_dir.resolve()}|orders:both"
    model, tok = load_pairrm(str(model_dir))
    rows = designed_rows()
    sources = [r["prompt"][0]["content"] for r in rows]
    chosen, rejected = [r["chosen"][0]["content"] for r in rows], [r["rejected"][0]["content"] for r in rows]
    sigmoid = [1 / (1 + math.exp(-x)) for x in pairrm_logits(model, tok, sources, chosen, rejected)]
    reverse = [1 / (1 + math.exp(-x)) for x in pairrm_logits(model, tok, sources, rejected, chosen)]
    predictions = read_jsonl(out / "reward_predictions.jsonl")
    assert [p["p_chosen_first"] for p in predictions] == pytest.approx(sigmoid, abs=1e-5)
    assert [p["p_rejected_first"] for p in predictions] == pytest.approx(reverse, abs=1e-5)
    p_chosen = [(a + 1 - b) / 2 for a, b in zip(sigmoid, reverse, strict=True)]
    assert [p["reward_chosen"] for p in predictions] == pytest.approx(p_chosen, abs=1e-5)
    assert summary["correct"] == sum(p > 0.5 for p in p_chosen)


def test_dataset_without_chosen_and_rejected_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "answers.jsonl"
    bad.write_text(json.dumps({"question": "Hi?", "answer": "Hello."}) + "\n")
    # the model does not exist: the data error comes first, before any model is looked at
    with pytest.raises(ValueError, match=rf"dataset '{re.escape(str(bad))}': cannot detect the dataset format as "
                                         r"'preference' rows from columns \[question, answer\]"):
        run(argv(bad, tmp_path / "out"))
    with pytest.raises(ValueError, match="missing required key.*model_name_or_path"):
        run([f"--dataset_name={bad}", f"--output_dir={tmp_path}"])


@pytest.mark.slow
def test_smollm2_sequence_classifier_over_the_shipped_dpo_pairs(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    rm_dir = tmp_path / "smollm2-rm"
    model = LlamaForSequenceClassification.from_pretrained(smollm2_dir, num_labels=1)
    model.save_pretrained(rm_dir)  # its (untrained) score head is saved, so it loads as a reward model
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(rm_dir)
    data = DATA / "llama_factory_demo" / "dpo_en_demo.json"
    out = tmp_path / "out"
    rows = 24  # the first 24 of its 300 pairs: 48 forward passes of SmolLM2 on CPU
    summary = run([f"--model_name_or_path={rm_dir}", f"--dataset_name={data}", "--dataset_split=train",
                   f"--num_samples={rows}", "--batch_size=8", "--max_length=256", f"--output_dir={out}"])
    assert summary["model_type"] == "reward_model" and summary["n"] == summary["rows"] == rows
    assert 0 <= summary["accuracy"] <= 1 and list(summary["per_bucket"]) == [NO_SCORES]  # the file has no scores
    assert summary["per_bucket"][NO_SCORES]["n"] == rows and list(summary["per_source"]) == [str(data)]
    predictions = read_jsonl(out / "reward_predictions.jsonl")
    assert len(predictions) == rows and all(list(p) == list(ROW_FIELDS) for p in predictions)
    assert all(math.isfinite(p["margin"]) and p["correct"] == (p["margin"] > 0) for p in predictions)
    assert (out / "accuracy.png").is_file()
