"""chatalign.pairs and scripts/gen_preference_pairs.py: exact best/worst picks and drop counts, mixing the originals
back in, resume by prompt id (nothing generated or judged twice), shards merged without duplicates, and the output
read by the dataset mixer and trained on by run_dpo.

Most tests replace generation.generate by a table of samples (same contract: rows appended to the output file, done
ids skipped) and judge by length, so every pick is known; the end-to-end tests sample the tiny Llama and judge with a
tiny LlamaForSequenceClassification reward model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_script
from test_judges import build_tiny_classifier

from chatalign import generation, judges, pairs
from chatalign.data import mix_datasets, seeded_rng
from chatalign.generation import GenerationArguments, ResumableJsonl
from chatalign.judges import FunctionJudge

# Samples per prompt id (n_to_rank 5). Judged by length, '?' unparseable:
SAMPLES = {
    "p0": ["bb", "a", "cccc", "cccc", "a"],                       # best 2 / worst 1, both by the first-occurrence rule
    "p1": ["same"] * 5,                                           # all identical: dropped before judging
    "p2": ["xx", "yy", "xx", "zz", "yy"],                         # all tied: dropped
    "p3": ["", " ", "abc", "", ""],                               # 4 empty: 1 judged sample left, dropped
    "p4": ["a", "abcde", "abc", "ab", "abcd"],                    # best 1 / worst 0
    "p5": ["?", "abcd", "ab", "?", "abc"],                        # 2 unparseable; best 1 / worst 2
    "p6": ["hello there", "hi", "hey you", "yes", "greetings"],   # best 0 / worst 1
    "p7": ["one", "three", "seventeen", "four", "sixty"],         # best 2 / worst 0
}
EXPECTED_PAIRS = {"p0": ("cccc", "a", 4.0, 1.0), "p4": ("abcde", "a", 5.0, 1.0), "p5": ("abcd", "ab", 4.0, 2.0),
                  "p6": ("hello there", "hi", 11.0, 2.0), "p7": ("seventeen", "one", 9.0, 3.0)}
# distinct non-empty samples of the prompts that are judged (p1 is not): 3 + 3 + 1 + 5 + 4 + 5 + 5
EXPECTED_JUDGE_CALLS = 26


def length_judge(**kwargs) -> FunctionJudge:
    return FunctionJudge("length", score=lambda p, r: None if "?" in r else float(len(r)), **kwargs)


def preference_rows(ids, duplicate=("p6",)):
    rows = []
    for pid in ids:
        k = pid[1:]
        rows.append({"prompt": [{"role": "user", "content": f"Question {k}?"}],
                     "chosen": [{"role": "assistant", "content": f"Original answer {k}."}],
                     "rejected": [{"role": "assistant", "content": f"Bad {k}."}],
                     "prompt_id": pid, "score_chosen": 9.0, "score_rejected": 2.0})
        if pid in duplicate:  # the same prompt with a second pair: never mixed back in
            rows.append({**rows[-1], "chosen": [{"role": "assistant", "content": f"Another answer {k}."}]})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompt_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", preference_rows(SAMPLES))


@pytest.fixture
def fake_generate(monkeypatch):
    """generation.generate answered from SAMPLES, honouring its contract; returns the ids asked for, per call."""
    calls: list[list[str]] = []

    def fake(model, items, params, gen_args, output_file, progress=True):
        items = list(items)
        calls.append([item["id"] for item in items])
        store = ResumableJsonl(output_file)
        for item in items:
            if item["id"] not in store:
                store.add({**item, "completions": SAMPLES[item["id"]][:params.n],
                           "generator": {"model": model, "backend": "fake", "params": asdict(params)}})
        return [store.get(item["id"]) for item in items]

    monkeypatch.setattr(generation, "generate", fake)
    return calls


def make_args(prompt_file, save_dir, **overrides) -> pairs.PairGenArguments:
    values = dict(model_path="policy", prompt_dataset=str(prompt_file), n_to_rank=5, judge="llm:unused",
                  dset_save_name=str(save_dir), seed=7)
    values.update(overrides)
    return pairs.PairGenArguments(**values)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------------------------
# Picking best and worst


def test_pick_pair_takes_the_first_best_and_the_first_worst():
    ranking = pairs.pick_pair([3.0, 7.0, 7.0, 1.0, 1.0])
    assert (ranking.status, ranking.best, ranking.worst, ranking.tie_best, ranking.tie_worst) == (
        pairs.OK, 1, 3, True, True)
    ranking = pairs.pick_pair([None, 2.0, float("nan"), 5.0, 4.0])
    assert (ranking.best, ranking.worst, ranking.tie_best, ranking.tie_worst) == (3, 1, False, False)
    assert ranking.scores == [None, 2.0, None, 5.0, 4.0]  # a NaN score takes no part, like an unparseable one
    assert pairs.pick_pair([6.0, 6.0, None]).status == pairs.DROP_ALL_TIED
    assert pairs.pick_pair([None, 6.0, None]).status == pairs.DROP_TOO_FEW
    assert pairs.pick_pair([]).status == pairs.DROP_TOO_FEW


def test_rank_prompts_exact_picks_and_counts():
    judge = length_judge()
    entries = [([{"role": "user", "content": f"Question {pid}?"}], SAMPLES[pid], None) for pid in sorted(SAMPLES)]
    rankings = pairs.rank_prompts(entries, judge, None)
    got = {pid: r for pid, r in zip(sorted(SAMPLES), rankings, strict=True)}
    assert {pid: (SAMPLES[pid][r.best], SAMPLES[pid][r.worst], r.scores[r.best], r.scores[r.worst])
            for pid, r in got.items() if r.status == pairs.OK} == EXPECTED_PAIRS
    assert {pid: r.status for pid, r in got.items() if r.status != pairs.OK} == {
        "p1": pairs.DROP_IDENTICAL, "p2": pairs.DROP_ALL_TIED, "p3": pairs.DROP_TOO_FEW}
    assert got["p0"].scores == [2.0, 1.0, 4.0, 4.0, 1.0] and (got["p0"].tie_best, got["p0"].tie_worst) == (True, True)
    assert (got["p5"].unparseable, got["p5"].scores) == (2, [None, 4.0, 2.0, None, 3.0])
    assert (got["p3"].empty, got["p3"].scores) == (4, [None, None, 3.0, None, None])
    assert got["p1"].scores == [None] * 5
    assert judge.calls == EXPECTED_JUDGE_CALLS  # one per distinct sample; none for the identical prompt
    # the same response to the same prompt is one judgment, within a batch too
    again = length_judge()
    pairs.rank_prompts([([{"role": "user", "content": "Q"}], ["a", "bb", "a"], None)] * 2, again, None)
    assert again.calls == 2


def test_rank_prompts_with_a_pairwise_judge_uses_tournament_wins():
    judge = FunctionJudge("cmp", compare=lambda p, a, b: 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5)
    ranking = pairs.rank_prompts([([{"role": "user", "content": "Q"}], ["bb", "a", "cccc", "ddd", ""], "orig")],
                                 judge, None)[0]
    assert ranking.scores == [1.0, 0.0, 3.0, 2.0, None]  # wins among the 4 non-empty samples
    assert (ranking.best, ranking.worst, ranking.empty, ranking.original_chosen_score) == (2, 1, 1, None)
    assert judge.calls == 12  # 4 x 3 ordered comparisons


# --------------------------------------------------------------------------------------------------------------------
# Mixing the originals back in


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
    mixed, stats = pairs.mix_original_pairs(rows, originals, counts, 0.25, 0.5, seed=3,
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
    assert pairs.mix_original_pairs(rows, originals, counts, 0.25, 0.5, seed=3)[0][0]["source"] == mixed[0]["source"]
    selections = {tuple(r["source"] for r in pairs.mix_original_pairs(rows, originals, counts, 0.25, 0.5, s)[0])
                  for s in range(5)}
    assert len(selections) > 1


def test_mix_keeps_the_generated_pair_when_the_original_chosen_is_the_generated_worst():
    rows = generated_rows(2)
    originals = originals_for(rows)
    originals["id0"]["chosen"] = [{"role": "assistant", "content": "worst 0"}]
    mixed, stats = pairs.mix_original_pairs(rows, originals, {"id0": 1, "id1": 1}, 0.0, 1.0, seed=0)
    assert stats["original chosen equals generated worst (kept generated)"] == 1
    assert [r["source"] for r in mixed] == ["generated", "original_chosen"]


def test_arguments_are_checked():
    base = dict(model_path="m", prompt_dataset="d", judge="rm:/x", dset_save_name="out")
    assert pairs.PairGenArguments(**base, prompt_dataset_split="train_prefs").output_split == "train"
    assert pairs.PairGenArguments(**base).model_id == "m"
    for bad, match in [({"p_ori_pair": 0.6, "p_ori_chosen": 0.5}, "must not exceed 1"),
                       ({"p_ori_chosen": -0.1}, r"p_ori_chosen must be in \[0, 1\]"),
                       ({"n_to_rank": 1}, "n_to_rank must be at least 2"),
                       ({"max_samples": 0}, "max_samples must be -1"),
                       ({"judge": "gpt-4o"}, "expected reward_model"),
                       ({"output_split": "validation"}, "output_split 'validation'")]:
        with pytest.raises(ValueError, match=match):
            pairs.PairGenArguments(**{**base, **bad})
    with pytest.raises(ValueError, match="missing required key"):
        pairs.PairGenArguments(model_path="m")


# --------------------------------------------------------------------------------------------------------------------
# Prompts


def test_load_prompts_dedups_ids_and_subsamples_with_the_seed(prompt_file, tmp_path):
    prompts = pairs.load_prompts(str(prompt_file), "train")
    assert prompts.schema == "preference" and [i["id"] for i in prompts.items] == sorted(SAMPLES)
    assert prompts.counts == {"rows": 9, "duplicate prompt ids (generated once)": 1, "prompts": 8}
    assert prompts.id_counts["p6"] == 2 and prompts.originals["p6"]["chosen"][0]["content"] == "Original answer 6."
    assert prompts.items[0]["messages"] == [{"role": "user", "content": "Question 0?"}]
    a = pairs.load_prompts(str(prompt_file), "train", max_samples=3, seed=1)
    assert [i["id"] for i in a.items] == [i["id"] for i in pairs.load_prompts(str(prompt_file), "train", 3, 1).items]
    assert len(a.items) == 3 and a.items == sorted(a.items, key=lambda i: i["id"])  # dataset order kept
    # an sft set gives prompt rows (no originals) and ids from the prompt text
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "Hi?"},
                                                             {"role": "assistant", "content": "Hello."}]}])
    plain = pairs.load_prompts(str(sft), "train")
    assert plain.schema == "prompt" and plain.originals == {}
    assert plain.items == [{"id": pairs.prompt_id_of([{"role": "user", "content": "Hi?"}]),
                            "messages": [{"role": "user", "content": "Hi?"}]}]


# --------------------------------------------------------------------------------------------------------------------
# The pipeline: exact output, resume, shards


def test_pipeline_output_counts_and_mixing(prompt_file, tmp_path, fake_generate):
    judge = length_judge()
    args = make_args(prompt_file, tmp_path / "out", p_ori_pair=0.25, p_ori_chosen=0.5)
    stats = pairs.run(args, GenerationArguments(), judge=judge, progress=False)
    rows = read_rows(tmp_path / "out" / "train.jsonl")
    assert {r["prompt_id"]: (r["chosen"][0]["content"], r["rejected"][0]["content"], r["score_chosen"],
                             r["score_rejected"]) for r in rows} == EXPECTED_PAIRS
    assert rows[0]["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert {r["source"] for r in rows} == {"generated"} and rows[0]["judge"] == "length"
    assert stats["pairs"] == {"unparseable judgments": 2, "empty samples": 4, "ties at best (first taken)": 1,
                              "ties at worst (first taken)": 1, "dropped: all samples identical": 1,
                              "dropped: all judged samples tied": 1, "dropped: fewer than 2 judged samples": 1,
                              "pairs": 5}
    # p6 occurs twice in the original: of the 4 eligible prompts, 1 original pair and 2 original chosen
    assert stats["mix"] == {"eligible (prompt id unique in the original)": 4,
                            "not eligible (prompt id repeated in the original)": 1,
                            "original_pair": 1, "original_chosen": 2, "generated": 2}
    mixed = {r["prompt_id"]: r for r in read_rows(tmp_path / "out" / "train_mix.jsonl")}
    assert mixed["p6"]["source"] == "generated"
    for row in mixed.values():
        k = row["prompt_id"][1:]
        if row["source"] == "original_chosen":  # the judge scored the original chosen too: same scale
            assert row["chosen"][0]["content"] == f"Original answer {k}." and row["score_chosen"] == 18.0
            assert row["rejected"][0]["content"] == EXPECTED_PAIRS[row["prompt_id"]][1]
        if row["source"] == "original_pair":
            assert (row["rejected"][0]["content"], row["score_chosen"]) == (f"Bad {k}.", 9.0)
    # + the original chosen of every judged prompt whose id is unique in the original (p0, p2, p3, p4, p5, p7: it is
    # scored with the samples, before anyone knows which prompts will give a pair)
    assert judge.calls == EXPECTED_JUDGE_CALLS + 6
    saved = yaml.safe_load((tmp_path / "out" / "stats.yaml").read_text())
    assert saved["last run"] == {"rank-000": {"generated": 8, "judge_calls": 32, "ranked": 8}}
    # both files are preference data for the mixer; the work folder is not read
    for split, n in (("train", 5), ("train_mix", 5)):
        data = mix_datasets({str(tmp_path / "out"): 1.0}, "preference", splits=[split]).train
        assert len(data) == n and set(data["prompt_id"]) == set(EXPECTED_PAIRS)


def test_resume_generates_and_judges_nothing_twice(prompt_file, tmp_path, fake_generate):
    args = make_args(prompt_file, tmp_path / "out")
    first = length_judge()
    pairs.run(args, GenerationArguments(), judge=first, progress=False)
    output = (tmp_path / "out" / "train.jsonl").read_text()
    assert fake_generate == [sorted(SAMPLES)] and first.calls == EXPECTED_JUDGE_CALLS

    second = length_judge()
    stats = pairs.run(args, GenerationArguments(), judge=second, progress=False)
    assert fake_generate == [sorted(SAMPLES)] and second.calls == 0
    assert stats["last run"]["rank-000"] == {"generated": 0, "judge_calls": 0, "ranked": 0}
    assert (tmp_path / "out" / "train.jsonl").read_text() == output

    # rankings lost, judgments kept: everything is ranked again, nothing is paid again
    shutil.rmtree(tmp_path / "out" / ".work" / "ranked")
    third = length_judge()
    stats = pairs.run(args, GenerationArguments(), judge=third, progress=False)
    assert third.calls == 0 and stats["last run"]["rank-000"]["ranked"] == 8
    assert (tmp_path / "out" / "train.jsonl").read_text() == output


def test_a_run_killed_while_judging_resumes_without_paying_twice(prompt_file, tmp_path, fake_generate):
    args = make_args(prompt_file, tmp_path / "out")

    class Killed(Exception):
        pass

    def dies_after_seven(prompt, response):
        if dying.calls > 7:
            raise Killed
        return float(len(response))

    dying = FunctionJudge("length", score=dies_after_seven, chunk_size=1)
    with pytest.raises(Killed):
        pairs.run(args, GenerationArguments(), judge=dying, progress=False)
    rest = length_judge(chunk_size=1)
    pairs.run(args, GenerationArguments(), judge=rest, progress=False)
    assert rest.calls == EXPECTED_JUDGE_CALLS - 7
    assert fake_generate == [sorted(SAMPLES)]  # samples were all written before judging started
    assert {r["prompt_id"] for r in read_rows(tmp_path / "out" / "train.jsonl")} == set(EXPECTED_PAIRS)


def test_other_sampling_settings_in_the_same_folder_are_refused(prompt_file, tmp_path, fake_generate):
    pairs.run(make_args(prompt_file, tmp_path / "out"), GenerationArguments(), judge=length_judge(), progress=False)
    with pytest.raises(ValueError, match=r"prompt id 'p\d' was sampled with n=5"):
        pairs.run(make_args(prompt_file, tmp_path / "out", n_to_rank=4), GenerationArguments(), judge=length_judge())
    with pytest.raises(ValueError, match="was sampled with model 'policy'"):
        pairs.run(make_args(prompt_file, tmp_path / "out", model_path="other"), GenerationArguments(),
                  judge=length_judge())


def test_judge_only_ranks_what_exists(prompt_file, tmp_path, fake_generate):
    stats = pairs.run(make_args(prompt_file, tmp_path / "out", judge_only=True), GenerationArguments(),
                      judge=length_judge(), progress=False)
    assert fake_generate == [] and stats["pairs"] == {"not generated": 8, "pairs": 0}


def test_two_shards_merge_without_duplicates(prompt_file, tmp_path, fake_generate):
    """world size 2 in one process: rank 0 and rank 1 each sample and judge their own prompt ids, then the merge."""
    args = make_args(prompt_file, tmp_path / "two")
    prompts = pairs.load_prompts(args.prompt_dataset, args.prompt_dataset_split)
    judge = length_judge()
    for rank in (0, 1):
        pairs.process_shard(args, GenerationArguments(), None, prompts, rank, 2, judge, progress=False)
    ws = pairs.Workspace(tmp_path / "two")
    shard_ids = [[r["id"] for r in ResumableJsonl(ws.generations(rank)).rows()] for rank in (0, 1)]
    assert sorted(shard_ids[0] + shard_ids[1]) == sorted(SAMPLES) and shard_ids[0] and shard_ids[1]
    assert all(pairs.shard_of(pid, 2) == rank for rank in (0, 1) for pid in shard_ids[rank])
    assert fake_generate == shard_ids  # each process asked only for its own prompts
    assert judge.calls == EXPECTED_JUDGE_CALLS
    stats = pairs.merge_and_save(args, prompts, judge.name)
    assert stats["pairs"]["pairs"] == 5 and stats["duplicates merged"] == {"samples": 0, "rankings": 0}

    single = make_args(prompt_file, tmp_path / "one")
    pairs.run(single, GenerationArguments(), judge=length_judge(), progress=False)
    assert read_rows(tmp_path / "two" / "train.jsonl") == read_rows(tmp_path / "one" / "train.jsonl")

    # a prompt written by two processes (e.g. runs with different world sizes) is merged once
    for folder in (ws.generations(0), ws.ranked(judge.name, 0)):
        first_line = folder.read_text().splitlines()[0]
        with open(folder.with_name("rank-001.jsonl"), "a") as handle:
            handle.write(first_line + "\n")
    stats = pairs.merge_and_save(args, prompts, judge.name)
    assert stats["duplicates merged"] == {"samples": 1, "rankings": 1}
    assert read_rows(tmp_path / "two" / "train.jsonl") == read_rows(tmp_path / "one" / "train.jsonl")
    # and a rerun with one process finds everything done
    again = length_judge()
    stats = pairs.run(args, GenerationArguments(), judge=again, progress=False)
    assert again.calls == 0 and stats["last run"]["rank-000"]["generated"] == 0


# --------------------------------------------------------------------------------------------------------------------
# End to end: the tiny Llama samples, a tiny reward model judges, run_dpo trains on the result


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    return build_tiny_classifier(tmp_path_factory.mktemp("pairs_rm"), tiny_tokenizer, seed=3)


def script_argv(model_dir, prompts, rm_dir, out, *extra):
    return ["--model_path", str(model_dir), "--prompt_dataset", str(prompts), "--n_to_rank", "4",
            "--gen_max_tokens", "8", "--judge", f"reward_model:{rm_dir}", "--dset_save_name", str(out),
            "--backend", "transformers", "--seed", "1", *extra]


def test_script_end_to_end_and_one_dpo_step(tmp_path, tiny_model_dir, reward_model_dir, monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", preference_rows([f"p{i}" for i in range(6)], duplicate=()))
    out = tmp_path / "pairs"
    script = load_script("gen_preference_pairs")
    stats = script.main(script_argv(tiny_model_dir, prompts, reward_model_dir, out, "--p_ori_chosen", "0.5"))
    n_pairs = stats["pairs"]["pairs"]
    assert n_pairs >= 4 and stats["last run"]["rank-000"]["generated"] == 6
    rows = read_rows(out / "train.jsonl")
    assert len(rows) == n_pairs and len({r["prompt_id"] for r in rows}) == n_pairs
    samples = {r["id"]: r["completions"] for r in ResumableJsonl(out / ".work/generations/rank-000.jsonl").rows()}
    assert all(len(c) == 4 for c in samples.values())
    # the saved scores are the reward model's, and chosen/rejected are the best/worst of the samples
    rm = judges.RewardModelJudge(str(reward_model_dir))
    for row in rows:
        scores = [j.value for j in rm.score_batch([(row["prompt"], s) for s in samples[row["prompt_id"]]])]
        assert row["score_chosen"] == pytest.approx(max(scores), abs=1e-5)
        assert row["score_rejected"] == pytest.approx(min(scores), abs=1e-5)
        assert row["chosen"][0]["content"] == samples[row["prompt_id"]][scores.index(max(scores))]
    mixed = mix_datasets({str(out): 1.0}, "preference", splits=["train_mix"]).train
    assert mixed["source"].count("original_chosen") == int(n_pairs * 0.5)
    assert (out / "run_args.yaml").is_file()

    # a rerun is free: nothing sampled, nothing judged (no model is even loaded)
    monkeypatch.setattr(judges._SequenceClassifier, "load", lambda self: pytest.fail("reward model loaded again"))
    again = script.main(script_argv(tiny_model_dir, prompts, reward_model_dir, out, "--p_ori_chosen", "0.5"))
    assert again["last run"]["rank-000"] == {"generated": 0, "judge_calls": 0, "ranked": 0}
    assert read_rows(out / "train.jsonl") == rows

    # run_dpo reads the folder through the dataset mixer and trains a step on it
    run_dpo = load_script("run_dpo")
    trainer = run_dpo.main([
        f"--model_name_or_path={tiny_model_dir}", f"--dataset_mixer={{{out}: 1.0}}", "--dataset_splits=train",
        "--bf16=false", "--use_cpu=true", "--activation_checkpointing=false", "--max_length=64",
        "--per_device_train_batch_size=2", "--max_steps=1", "--logging_steps=1", "--save_strategy=no",
        "--report_to=none", "--disable_tqdm=true", f"--output_dir={tmp_path / 'dpo'}", "--seed=0"])
    assert trainer.state.global_step == 1 and len(trainer.train_dataset) == n_pairs
    assert any("loss" in h for h in trainer.state.log_history)


def test_accelerate_launch_two_processes_on_cpu(tmp_path, tiny_model_dir, reward_model_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", preference_rows([f"p{i}" for i in range(8)], duplicate=()))
    out = tmp_path / "pairs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # `accelerate launch --cpu` starts one process whatever --num_processes says; --multi_gpu starts two (torchrun),
    # which join over gloo on a machine without GPUs.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561",
           str(REPO / "scripts" / "gen_preference_pairs.py"), *script_argv(tiny_model_dir, prompts, reward_model_dir,
                                                                          out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ws = pairs.Workspace(out)
    shard_ids = [[r["id"] for r in ResumableJsonl(ws.generations(rank)).rows()] for rank in (0, 1)]
    assert sorted(shard_ids[0] + shard_ids[1]) == [f"p{i}" for i in range(8)]
    assert all(pairs.shard_of(pid, 2) == rank for rank in (0, 1) for pid in shard_ids[rank])
    stats = yaml.safe_load((out / "stats.yaml").read_text())
    assert set(stats["last run"]) == {"rank-000", "rank-001"}
    assert stats["duplicates merged"] == {"samples": 0, "rankings": 0}
    rows = read_rows(out / "train.jsonl")
    assert len(rows) == stats["pairs"]["pairs"] == len({r["prompt_id"] for r in rows})
    assert proc.stdout.count("pairs ") == 1  # only the main process merges and reports


@pytest.mark.slow
def test_smollm2_samples_and_judges_itself(smollm2_dir, tmp_path):
    """The real SmolLM2-135M-Instruct as policy and as in-process LLM judge: every prompt is accounted for (a pair or
    a counted drop), and the pairs it keeps have ratings in 1..10 with chosen above rejected."""
    questions = ["What is the capital of France?", "Give one tip for sleeping well.", "Name a primary color."]
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "assistant", "content": "y"}], "prompt_id": f"q{i}"} for i, q in enumerate(questions)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    stats = load_script("gen_preference_pairs").main([
        "--model_path", str(smollm2_dir), "--prompt_dataset", str(prompts), "--n_to_rank", "3",
        "--gen_max_tokens", "48", "--judge", f"llm:{smollm2_dir}", "--judge_max_tokens", "96",
        "--dset_save_name", str(tmp_path / "out"), "--backend", "transformers"])
    counts = stats["pairs"]
    assert counts["pairs"] + sum(v for k, v in counts.items() if k.startswith("dropped:")) == 3
    for row in read_rows(tmp_path / "out" / "train.jsonl"):
        assert 1 <= row["score_rejected"] < row["score_chosen"] <= 10
