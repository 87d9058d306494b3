"""chatalign.synth.pairs: the ranking rule, mixing originals back in, arguments and prompt loading."""

from __future__ import annotations

import pytest
from helpers.judging import length_judge
from helpers.pair_samples import EXPECTED_JUDGE_CALLS, EXPECTED_PAIRS, SAMPLES, write_jsonl

from chatalign.judges.models import FunctionJudge
from chatalign.store import prompt_id, seeded_rng
from chatalign.synth.pairs import (
    DROP_ALL_TIED,
    DROP_IDENTICAL,
    DROP_TOO_FEW,
    OK,
    PairGenArguments,
    load_prompts,
    mix_original_pairs,
    pick_pair,
    rank_prompts,
)


def test_pick_pair_takes_the_first_best_and_the_first_worst():
    ranking = pick_pair([3.0, 7.0, 7.0, 1.0, 1.0])
    assert (ranking.status, ranking.best, ranking.worst, ranking.tie_best, ranking.tie_worst) == (
        OK, 1, 3, True, True)
    ranking = pick_pair([None, 2.0, float("nan"), 5.0, 4.0])
    assert (ranking.best, ranking.worst, ranking.tie_best, ranking.tie_worst) == (3, 1, False, False)
    assert ranking.scores == [None, 2.0, None, 5.0, 4.0]  # a NaN score takes no part, like an unparseable one
    assert pick_pair([6.0, 6.0, None]).status == DROP_ALL_TIED
    assert pick_pair([None, 6.0, None]).status == DROP_TOO_FEW
    assert pick_pair([]).status == DROP_TOO_FEW


def test_rank_prompts_exact_picks_and_counts():
    judge = length_judge()
    entries = [([{"role": "user", "content": f"Question {pid}?"}], SAMPLES[pid], None) for pid in sorted(SAMPLES)]
    rankings = rank_prompts(entries, judge, None)
    got = {pid: r for pid, r in zip(sorted(SAMPLES), rankings, strict=True)}
    assert {pid: (SAMPLES[pid][r.best], SAMPLES[pid][r.worst], r.scores[r.best], r.scores[r.worst])
            for pid, r in got.items() if r.status == OK} == EXPECTED_PAIRS
    assert {pid: r.status for pid, r in got.items() if r.status != OK} == {
        "p1": DROP_IDENTICAL, "p2": DROP_ALL_TIED, "p3": DROP_TOO_FEW}
    assert got["p0"].scores == [2.0, 1.0, 4.0, 4.0, 1.0] and (got["p0"].tie_best, got["p0"].tie_worst) == (True, True)
    assert (got["p5"].unparseable, got["p5"].scores) == (2, [None, 4.0, 2.0, None, 3.0])
    assert (got["p3"].empty, got["p3"].scores) == (4, [None, None, 3.0, None, None])
    assert got["p1"].scores == [None] * 5
    assert judge.calls == EXPECTED_JUDGE_CALLS  # one per distinct sample; none for the identical prompt
    # the same response to the same prompt is one judgment, within a batch too
    again = length_judge()
    rank_prompts([([{"role": "user", "content": "Q"}], ["a", "bb", "a"], None)] * 2, again, None)
    assert again.calls == 2


def test_rank_prompts_with_a_pairwise_judge_uses_tournament_wins():
    judge = FunctionJudge("cmp", compare=lambda p, a, b: 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5)
    ranking = rank_prompts([([{"role": "user", "content": "Q"}], ["bb", "a", "cccc", "ddd", ""], "orig")],
                                 judge, None)[0]
    assert ranking.scores == [1.0, 0.0, 3.0, 2.0, None]  # wins among the 4 non-empty samples
    assert (ranking.best, ranking.worst, ranking.empty, ranking.original_chosen_score) == (2, 1, 1, None)
    assert judge.calls == 12  # 4 x 3 ordered comparisons


def generated_rows(n):
    return [{"prompt": [{"role": "user", "content": f"Q{i}"}], "chosen": [{"role": "assistant", "content": f"best {i}"}],
             "rejected": [{"role": "assistant", "content": f"worst {i}"}], "score_chosen": 5.0, "score_rejected": 1.0,
             "prompt_id": f"id{i}", "source": "generated"} for i in range(n)]


def originals_for(rows):
    return {r["prompt_id"]: {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": f"orig {i}"}],
                             "rejected": [{"role": "assistant", "content": f"orig bad {i}"}], "score_chosen": 8.0,
                             "score_rejected": None, "prompt_id": r["prompt_id"]} for i, r in enumerate(rows)}


def test_mix_original_pairs_counts_and_uniqueness():
    rows = generated_rows(20)
    originals = originals_for(rows)
    repeated = {"id3", "id7", "id11", "id15"}
    counts = {pid: 2 if pid in repeated else 1 for pid in originals}
    mixed, stats = mix_original_pairs(rows, originals, counts, 0.25, 0.5, seed=3,
                                            original_chosen_scores={f"id{i}": 6.5 for i in range(20)})
    assert stats == {"eligible (prompt id unique in the original)": 16,
                     "not eligible (prompt id repeated in the original)": 4,
                     "original_pair": 4, "original_chosen": 8, "generated": 8}
    assert [r["prompt_id"] for r in mixed] == [r["prompt_id"] for r in rows]  # order and ids kept
    by_source = {}
    for row in mixed:
        by_source.setdefault(row["source"], []).append(row)
    assert not repeated & {r["prompt_id"] for r in by_source["original_pair"] + by_source["original_chosen"]}
    for row in by_source["original_pair"]:
        i = int(row["prompt_id"][2:])
        assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == (f"orig {i}", f"orig bad {i}")
        assert (row["score_chosen"], row["score_rejected"]) == (8.0, None)
    for row in by_source["original_chosen"]:
        i = int(row["prompt_id"][2:])
        assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == (f"orig {i}", f"worst {i}")
        assert (row["score_chosen"], row["score_rejected"]) == (6.5, 1.0)
    # the selection is the seeded permutation of the eligible ids: same seed, same rows
    eligible = [r["prompt_id"] for r in rows if r["prompt_id"] not in repeated]
    order = seeded_rng(3, "mix_original_pairs").permutation(16)
    assert {r["prompt_id"] for r in by_source["original_pair"]} == {eligible[k] for k in order[:4]}
    assert mix_original_pairs(rows, originals, counts, 0.25, 0.5, seed=3)[0][0]["source"] == mixed[0]["source"]
    selections = {tuple(r["source"] for r in mix_original_pairs(rows, originals, counts, 0.25, 0.5, s)[0])
                  for s in range(5)}
    assert len(selections) > 1


def test_mix_keeps_the_generated_pair_when_the_original_chosen_is_the_generated_worst():
    rows = generated_rows(2)
    originals = originals_for(rows)
    originals["id0"]["chosen"] = [{"role": "assistant", "content": "worst 0"}]
    mixed, stats = mix_original_pairs(rows, originals, {"id0": 1, "id1": 1}, 0.0, 1.0, seed=0)
    assert stats["original chosen equals generated worst (kept generated)"] == 1
    assert [r["source"] for r in mixed] == ["generated", "original_chosen"]


def test_arguments_are_checked():
    base = dict(model_path="m", prompt_dataset="d", judge="rm:/x", dset_save_name="out")
    assert PairGenArguments(**base, prompt_dataset_split="train_prefs").output_split == "train"
    assert PairGenArguments(**base).model_id == "m"
    for bad, match in [({"p_ori_pair": 0.6, "p_ori_chosen": 0.5}, "must not exceed 1"),
                       ({"p_ori_chosen": -0.1}, r"p_ori_chosen must be in \[0, 1\]"),
                       ({"n_to_rank": 1}, "n_to_rank must be at least 2"),
                       ({"max_samples": 0}, "max_samples must be -1"),
                       ({"judge": "gpt-4o"}, "expected reward_model"),
                       ({"output_split": "validation"}, "output_split 'validation'")]:
        with pytest.raises(ValueError, match=match):
            PairGenArguments(**{**base, **bad})
    with pytest.raises(ValueError, match="missing required key"):
        PairGenArguments(model_path="m")


def test_load_prompts_dedups_ids_and_subsamples_with_the_seed(prompt_file, tmp_path):
    prompts = load_prompts(str(prompt_file), "train")
    assert prompts.schema == "preference" and [i["id"] for i in prompts.items] == sorted(SAMPLES)
    assert prompts.counts == {"rows": 9, "duplicate prompt ids (generated once)": 1, "prompts": 8}
    assert prompts.id_counts["p6"] == 2 and prompts.originals["p6"]["chosen"][0]["content"] == "Original answer 6."
    assert prompts.items[0]["messages"] == [{"role": "user", "content": "Question 0?"}]
    a = load_prompts(str(prompt_file), "train", max_samples=3, seed=1)
    assert [i["id"] for i in a.items] == [i["id"] for i in load_prompts(str(prompt_file), "train", 3, 1).items]
    assert len(a.items) == 3 and a.items == sorted(a.items, key=lambda i: i["id"])  # dataset order kept
    # an sft set gives prompt rows (no originals) and ids from the prompt text
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "Hi?"},
                                                             {"role": "assistant", "content": "Hello."}]}])
    plain = load_prompts(str(sft), "train")
    assert plain.schema == "prompt" and plain.originals == {}
    assert plain.items == [{"id": prompt_id([{"role": "user", "content": "Hi?"}]),
                            "messages": [{"role": "user", "content": "Hi?"}]}]
