"""chatalign.judges.annotate and scripts/judge_dataset.py: agreement with the original labels."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import load_script
from helpers.chat_stub import Stub
from helpers.judging import PROMPT, length_judge

from chatalign.judges.annotate import (
    agreement_summary,
    annotate_pairs,
    annotator_name,
    chosen_shown_first,
    format_agreement_table,
)
from chatalign.judges.cache import JudgmentCache, cached_scores
from chatalign.judges.models import FunctionJudge, LLMJudge
from chatalign.judges.rubrics import get_rubric, rubric_messages
from chatalign.store import pair_id


def quality(text: str) -> int:
    return {"great": 9, "good": 7, "okay": 5, "poor": 2}.get(text.split()[0].lower(), 0)


def stars(text: str) -> int:
    """The 1-5 rating the rubric stubs give a text (0: they answer N/A)."""
    return {"great": 5, "good": 4, "okay": 3, "poor": 1}.get(text.split()[0].lower(), 0)


def shown_texts(messages) -> list[str]:
    """The texts a rubric prompt shows, in order ("<text k> ..." lines of its annotation section)."""
    annotation = messages[-1]["content"].split("## Annotation", 1)[1]
    return re.findall(r"<text \d+> (.*?)(?=\n<text \d+> |\n\n### Output)", annotation, re.S)


def rubric_judge(messages):
    """UltraFeedback-format answers; a pair of 'biased' texts always gets text 1 rated higher."""
    texts = shown_texts(messages)
    biased = len(texts) == 2 and all("biased" in t for t in texts)
    sections = []
    for i, text in enumerate(texts, 1):
        rating = (5 if i == 1 else 1) if biased else stars(text) or "N/A"
        sections.append(f"#### Output for Text {i}\nRating: {rating}\nRationale: As I see it.")
    return "\n\n".join(sections)


def pair_judge(messages):
    content = messages[-1]["content"]
    a = re.search(r"\[Reply A\]\n(.*)\n\[End of reply A\]", content, re.S).group(1)
    b = re.search(r"\[Reply B\]\n(.*)\n\[End of reply B\]", content, re.S).group(1)
    if not quality(a) or not quality(b):
        return "unsure"
    if quality(a) == quality(b) or "biased" in a + b:
        return "[[A]]"  # equal, or a position-biased call: always the first shown
    return "[[A]]" if quality(a) > quality(b) else "[[B]]"


# (chosen, rejected): single   -> agree, agree, disagree, tie, unparseable, agree
#                     pairwise -> agree, agree, disagree, tie (A then A), unparseable, tie (position-biased)
HANDMADE = [("Great answer.", "Poor answer."), ("Good answer.", "Okay answer."), ("Poor answer.", "Good answer."),
            ("Okay one.", "Okay two."), ("Weird answer.", "Good answer."), ("Great biased.", "Okay biased.")]
VERDICT_KEYS = ("agree", "disagree", "tie", "unparseable")


def handmade_rows(pairs=HANDMADE):
    return [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}],
             "prompt_id": f"q{i}", "score_chosen": 8.0, "score_rejected": 4.0} for i, (c, r) in enumerate(pairs)]


@pytest.fixture
def handmade_prefs(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in handmade_rows()))
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def argv_for(prefs, out, mode, *extra):
    return ["--dset_name", str(prefs), "--judge_model", "stub", "--eval_mode", mode, "--num_to_judge", "-1",
            "--output_path", str(out), *extra]


def test_judge_dataset_single_mode_rates_with_the_rubric(handmade_prefs, tmp_path, capsys):
    script = load_script("judge_dataset")
    out = tmp_path / "single.csv"
    judge = LLMJudge.from_callable(rubric_judge, "stub")
    summary = script.main(argv_for(handmade_prefs, out, "single"), judge=judge)
    assert {k: summary[k] for k in ("rows", "agree", "disagree", "tie", "unparseable")} == {
        "rows": 6, "agree": 3, "disagree": 1, "tie": 1, "unparseable": 1}
    assert summary["agreement_rate"] == pytest.approx(3 / 5) and summary["agreement_without_ties"] == 0.75
    assert summary["agreement_over_all_rows"] == 0.5
    assert judge.calls == 12 and summary["judge_calls"] == 12  # 12 responses, each rated alone
    printed = capsys.readouterr().out
    assert ("\nagree               3    50.0%\ndisagree            1    16.7%\ntie                 1    16.7%\n"
            "unparseable         1    16.7%\ntotal               6\n"
            "agreement with the original labels (agree: the chosen response judged better):\n"
            "  agree / parseable rows (a tie is not an agreement)   60.0%  (3 of 5)\n"
            "  agree / (agree + disagree) (ties left out)           75.0%  (3 of 4)\n"
            "  agree / all rows (unparseable ones too)              50.0%  (3 of 6)\n") in printed
    assert "mode single, rubric overall (12 judgments paid for in this run)" in printed
    rows = read_csv(out)
    assert list(rows[0]) == ["row", "pair_id", "prompt_id", "verdict", "rating_chosen", "rating_rejected",
                             "orig_score_chosen", "orig_score_rejected", "prompt", "chosen", "rejected",
                             "judge_output_chosen", "judge_output_rejected"]
    assert [r["verdict"] for r in rows] == ["agree", "agree", "disagree", "tie", "unparseable", "agree"]
    assert [(r["rating_chosen"], r["rating_rejected"]) for r in rows] == [
        ("5.0", "1.0"), ("4.0", "3.0"), ("1.0", "4.0"), ("3.0", "3.0"), ("", "4.0"), ("5.0", "3.0")]
    assert rows[4]["judge_output_chosen"] == "#### Output for Text 1\nRating: N/A\nRationale: As I see it."
    assert rows[0]["prompt"] == "User: Question 0?" and rows[0]["orig_score_chosen"] == "8.0"
    # rows are identified by the store's pair id, like every other resumable job
    assert rows[0]["pair_id"] == pair_id([{"role": "user", "content": "Question 0?"}], rows[0]["chosen"],
                                         rows[0]["rejected"])
    # rerun: resumed from the work folder, nothing paid again, the same CSV
    again = LLMJudge.from_callable(rubric_judge, "stub")
    assert script.main(argv_for(handmade_prefs, out, "single"), judge=again)["judge_calls"] == 0 and again.calls == 0
    assert read_csv(out) == rows


def test_judge_dataset_all_mode_rates_both_in_one_prompt(handmade_prefs, tmp_path, capsys):
    script = load_script("judge_dataset")
    out = tmp_path / "all.csv"
    judge = LLMJudge.from_callable(rubric_judge, "stub")
    summary = script.main(argv_for(handmade_prefs, out, "all", "--seed", "0"), judge=judge)
    assert judge.calls == 6 and summary["judge_calls"] == 6  # one prompt per pair
    rows = read_csv(out)
    assert list(rows[0]) == ["row", "pair_id", "prompt_id", "verdict", "rating_chosen", "rating_rejected",
                             "chosen_first", "orig_score_chosen", "orig_score_rejected", "prompt", "chosen",
                             "rejected", "judge_output"]
    # seed 0 shows chosen first in rows 0, 2, 5; the biased judge's last row then sides with chosen
    assert [r["chosen_first"] for r in rows] == ["True", "False", "True", "False", "False", "True"]
    assert [r["chosen_first"] == "True" for r in rows] == [chosen_shown_first(r["pair_id"], 0) for r in rows]
    assert [r["verdict"] for r in rows] == ["agree", "agree", "disagree", "tie", "unparseable", "agree"]
    # ratings are mapped back from the order shown: row 1 showed the rejected "Okay answer." as text 1
    assert (rows[1]["rating_chosen"], rows[1]["rating_rejected"]) == ("4.0", "3.0")
    assert rows[1]["judge_output"].startswith("#### Output for Text 1\nRating: 3\n")
    assert (rows[4]["rating_chosen"], rows[4]["rating_rejected"]) == ("", "4.0")
    assert {k: summary[k] for k in ("agree", "disagree", "tie", "unparseable", "chosen_first")} == {
        "agree": 3, "disagree": 1, "tie": 1, "unparseable": 1, "chosen_first": 3}
    assert summary["agreement_rate_chosen_first"] == pytest.approx(2 / 3)
    assert summary["agreement_rate_chosen_second"] == 0.5
    printed = capsys.readouterr().out
    assert "mode all, rubric overall, seed 0 (6 judgments paid for in this run)" in printed
    assert "chosen shown as text 1 in 3 of 6 rows; agree / parseable: 66.7% when shown first, 50.0% when shown " \
           "second" in printed
    # another seed (the default 42) flips rows 1 and 4: verdicts are keyed by seed, and only those two prompts are
    # new to the judgment cache of the shared work folder
    other = LLMJudge.from_callable(rubric_judge, "stub")
    script.main(argv_for(handmade_prefs, tmp_path / "all42.csv", "all", "--work_dir", str(tmp_path / "all_work")),
                judge=other)
    flipped = [r["chosen_first"] for r in read_csv(tmp_path / "all42.csv")]
    assert flipped == ["True", "True", "True", "False", "True", "True"] and other.calls == 2
    again = LLMJudge.from_callable(rubric_judge, "stub")
    assert script.main(argv_for(handmade_prefs, out, "all", "--seed", "0"), judge=again)["judge_calls"] == 0
    assert again.calls == 0 and read_csv(out) == rows


def test_seeded_order_is_per_pair_and_survives_resume(tmp_path):
    pids = [pair_id([{"role": "user", "content": f"Question {i}?"}], "a", "b") for i in range(12)]
    order = [chosen_shown_first(pid, 42) for pid in pids]
    assert order == [chosen_shown_first(pid, 42) for pid in pids]   # same seed, same order
    assert order == [False, False, True, True, True, True, False, False, False, False, True, False]  # both occur
    assert order != [chosen_shown_first(pid, 7) for pid in pids]
    # the order follows the pair, not its row: reversed rows get the same order, and a resumed run keeps it
    script = load_script("judge_dataset")
    rows = handmade_rows([(f"Good {i}.", f"Okay {i}.") for i in range(8)])
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = LLMJudge.from_callable(rubric_judge, "stub")
    forward = annotate_pairs(rows, judge, None, "all")
    backward = annotate_pairs(rows[::-1], judge, None, "all")
    assert [v["chosen_first"] for v in forward] == [v["chosen_first"] for v in backward[::-1]]
    assert {v["chosen_first"] for v in forward} == {True, False} and all(v["verdict"] == "agree" for v in forward)
    out = tmp_path / "all.csv"
    first = LLMJudge.from_callable(rubric_judge, "stub")
    script.main(argv_for(prefs, out, "all", "--num_to_judge", "3"), judge=first)
    head = read_csv(out)
    rest = LLMJudge.from_callable(rubric_judge, "stub")
    script.main(argv_for(prefs, out, "all"), judge=rest)
    assert (first.calls, rest.calls) == (3, 5)
    full = read_csv(out)
    assert full[:3] == head and [r["chosen_first"] == "True" for r in full] == [v["chosen_first"] for v in forward]


def test_failed_requests_are_retried_by_a_rerun(handmade_prefs, tmp_path):
    script = load_script("judge_dataset")
    out = tmp_path / "all.csv"

    def flaky(conversations):  # the server fails every request about "Poor answer."
        return [None if "Poor answer." in c[-1]["content"] else rubric_judge(c) for c in conversations]

    summary = script.main(argv_for(handmade_prefs, out, "all"), judge=LLMJudge(flaky, "stub"))
    assert (summary["unparseable"], summary["judge_calls"]) == (3, 6)  # rows 0 and 2, and row 4's N/A
    assert read_csv(out)[0]["judge_output"] == ""
    healthy = LLMJudge.from_callable(rubric_judge, "stub")
    summary = script.main(argv_for(handmade_prefs, out, "all"), judge=healthy)
    assert healthy.calls == 2 and summary["unparseable"] == 1 and read_csv(out)[0]["verdict"] == "agree"


def test_rubric_judgments_are_keyed_apart_from_the_generic_prompt(tmp_path):
    rows = handmade_rows()[:2]
    judge = LLMJudge.from_callable(lambda m: "Rating: [[7]]", "stub")
    cache = JudgmentCache(tmp_path / "judgments.jsonl")
    # the old single mode's 1-10 judgments of the same responses, by the same LLM, in the same cache
    cached_scores(judge, cache, [(r["prompt"], r[k][0]["content"]) for r in rows for k in ("chosen", "rejected")])
    rubric = LLMJudge.from_callable(rubric_judge, "stub")
    verdicts = annotate_pairs(rows, rubric, cache, "single")
    assert rubric.calls == 4 and [v["rating_chosen"] for v in verdicts] == [5.0, 4.0]
    assert annotator_name(rubric, "single") == f"{rubric.name}|rubric:overall:348bda97da"
    assert annotator_name(rubric, "single", "helpfulness") != annotator_name(rubric, "single")
    assert annotator_name(rubric, "all", seed=1) == f"{rubric.name}|rubric:overall:348bda97da|seed:1"
    assert annotator_name(rubric, "pairwise") == rubric.name


def test_single_mode_takes_a_pointwise_judges_score(handmade_prefs, tmp_path):
    script = load_script("judge_dataset")
    out = tmp_path / "rm.csv"
    summary = script.main(argv_for(handmade_prefs, out, "single"), judge=length_judge())
    rows = read_csv(out)
    # the score replaces the rubric rating: longer is better here
    assert [(r["rating_chosen"], r["rating_rejected"]) for r in rows[:2]] == [("13.0", "12.0"), ("12.0", "12.0")]
    assert rows[0]["judge_output_chosen"] == "" and {k: summary[k] for k in VERDICT_KEYS} == {
        "agree": 3, "disagree": 0, "tie": 3, "unparseable": 0}


def test_judge_dataset_pairwise_mode_cancels_position_bias(handmade_prefs, tmp_path, capsys):
    script = load_script("judge_dataset")
    out = tmp_path / "pairwise.csv"
    judge = LLMJudge.from_callable(pair_judge, "stub")
    summary = script.main(["--dset_name", str(handmade_prefs), "--judge_model", "stub", "--eval_mode", "pairwise",
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
                            judge, None, "pairwise")
    assert biased[0]["verdict"] == "tie"


def test_agreement_counts_ties_apart():
    verdicts = [{"verdict": v} for v in ["agree"] * 5 + ["disagree"] * 2 + ["tie"] * 3 + ["unparseable"]]
    summary = agreement_summary(verdicts)
    assert summary == {"rows": 11, "agree": 5, "disagree": 2, "tie": 3, "unparseable": 1, "agreement_rate": 0.5,
                       "agreement_without_ties": 5 / 7, "agreement_over_all_rows": 5 / 11}
    table = format_agreement_table(summary)
    assert "  agree / parseable rows (a tie is not an agreement)   50.0%  (5 of 10)" in table
    assert "  agree / (agree + disagree) (ties left out)           71.4%  (5 of 7)" in table
    only_ties = agreement_summary([{"verdict": "tie"}, {"verdict": "unparseable"}])
    assert only_ties["agreement_rate"] == 0.0 and only_ties["agreement_without_ties"] is None
    assert "  agree / (agree + disagree) (ties left out)               -  (0 of 0)" in format_agreement_table(
        only_ties)


def test_annotate_pairs_needs_the_right_kind_of_judge():
    row = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="eval_mode all rates both responses in one rubric prompt, so it needs an LLM"):
        annotate_pairs([row], length_judge(), None, "all")
    with pytest.raises(ValueError, match="eval_mode pairwise needs a judge that compares"):
        annotate_pairs([row], length_judge(), None, "pairwise")
    with pytest.raises(ValueError, match="eval_mode single needs an LLM judge or one that scores one response"):
        annotate_pairs([row], FunctionJudge("cmp", compare=lambda p, a, b: 1.0), None, "single")
    with pytest.raises(ValueError, match="eval_mode must be one of single, all, pairwise, got 'both'"):
        annotate_pairs([row], length_judge(), None, "both")


def test_judge_dataset_rejects_bad_modes_before_any_work(tmp_path):
    script = load_script("judge_dataset")
    missing = tmp_path / "no-such-prefs.jsonl"   # never read: the errors come first
    with pytest.raises(ValueError, match="eval_mode must be one of single, all, pairwise, got 'both'"):
        script.main(argv_for(missing, tmp_path / "x.csv", "both"))
    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()   # a reward model's folder: loaded on first use only, so nothing is loaded here
    argv = argv_for(missing, tmp_path / "x.csv", "all")
    argv[argv.index("stub")] = f"reward_model:{rm_dir}"
    with pytest.raises(ValueError, match=r"so it needs an LLM judge .*reward_model:.*use eval_mode single"):
        script.main(argv)
    with pytest.raises(ValueError, match="rubric must be one of overall, helpfulness"):
        script.main(argv_for(missing, tmp_path / "x.csv", "single", "--rubric", "harmlessness"))


def test_judge_dataset_all_mode_over_http_asks_at_temperature_0(handmade_prefs, tmp_path):
    script = load_script("judge_dataset")
    with Stub(content=lambda body: rubric_judge(body["messages"])) as stub:
        argv = argv_for(handmade_prefs, tmp_path / "http.csv", "all", "--num_to_judge", "2")
        argv[argv.index("stub")] = f"judge-model@{stub.url}"
        summary = script.main(argv)
    assert summary["agree"] == 2 and summary["judge_calls"] == 2 and len(stub.requests) == 2
    assert {body["temperature"] for body in stub.requests} == {0.0}
    assert {body["model"] for body in stub.requests} == {"judge-model"}
    rows = handmade_rows()[:2]
    assert sorted(json.dumps(body["messages"]) for body in stub.requests) == sorted(
        json.dumps(rubric_messages(get_rubric("overall"), r["prompt"], [r["chosen"][0]["content"],
                                                                         r["rejected"][0]["content"]]))
        for r in rows)   # seed 42 shows chosen first in both


@pytest.mark.slow
def test_judge_dataset_with_smollm2_as_the_rubric_judge(handmade_prefs, tmp_path, smollm2_dir):
    # mode all through a local checkpoint judged in process (greedy); one short answer keeps it cheap on a CPU
    script = load_script("judge_dataset")
    out = tmp_path / "all.csv"
    argv = argv_for(handmade_prefs, out, "all", "--num_to_judge", "1", "--judge_max_tokens", "16")
    argv[argv.index("stub")] = str(smollm2_dir)
    summary = script.main(argv)
    assert summary["rows"] == 1 and summary["judge_calls"] == 1
    rows = read_csv(out)
    assert rows[0]["judge_output"] and rows[0]["verdict"] in VERDICT_KEYS  # an answer, whether or not it parses
    assert script.main(argv)["judge_calls"] == 0 and read_csv(out) == rows
