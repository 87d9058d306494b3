"""chatalign.judges.annotate and scripts/judge_dataset.py: agreement with the original labels."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import load_script
from helpers.judging import PROMPT, length_judge, reply_in

from chatalign.judges.annotate import annotate_pairs
from chatalign.judges.models import LLMJudge
from chatalign.store import pair_id


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
    # rows are identified by the store's pair id, like every other resumable job
    assert rows[0]["pair_id"] == pair_id([{"role": "user", "content": "Question 0?"}], rows[0]["chosen"],
                                         rows[0]["rejected"])
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
    biased = annotate_pairs([json.loads(line) for line in handmade_prefs.read_text().splitlines()][5:],
                                   judge, None, "all")
    assert biased[0]["verdict"] == "tie"


def test_annotate_pairs_needs_the_right_kind_of_judge():
    row = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="eval_mode all needs a judge that compares"):
        annotate_pairs([row], length_judge(), None, "all")
    with pytest.raises(ValueError, match="eval_mode must be one of single, all"):
        annotate_pairs([row], length_judge(), None, "both")
