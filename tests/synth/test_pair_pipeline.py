"""chatalign.synth.pair_pipeline and scripts/gen_preference_pairs.py: counts, resume without paying twice,
shards, two processes, a DPO step on the pairs."""

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
from conftest import REPO, build_tiny_classifier, load_script
from helpers.judging import length_judge
from helpers.pair_samples import EXPECTED_JUDGE_CALLS, EXPECTED_PAIRS, SAMPLES, preference_rows, write_jsonl

from chatalign.data.mixer import mix_datasets
from chatalign.generation.params import GenerationArguments
from chatalign.judges.models import FunctionJudge, RewardModelJudge
from chatalign.store import ResumableJsonl
from chatalign.synth.pair_pipeline import Workspace, merge_and_save, process_shard, run, shard_of
from chatalign.synth.pairs import PairGenArguments, load_prompts


@pytest.fixture
def fake_generate(monkeypatch):
    """generate answered from SAMPLES, honouring its contract; returns the ids asked for, per call."""
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

    monkeypatch.setattr("chatalign.synth.pair_pipeline.generate", fake)
    return calls


def make_args(prompt_file, save_dir, **overrides) -> PairGenArguments:
    values = dict(model_path="policy", prompt_dataset=str(prompt_file), n_to_rank=5, judge="llm:unused",
                  dset_save_name=str(save_dir), seed=7)
    values.update(overrides)
    return PairGenArguments(**values)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_output_counts_and_mixing(prompt_file, tmp_path, fake_generate):
    judge = length_judge()
    args = make_args(prompt_file, tmp_path / "out", p_ori_pair=0.25, p_ori_chosen=0.5)
    stats = run(args, GenerationArguments(), judge=judge, progress=False)
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
    run(args, GenerationArguments(), judge=first, progress=False)
    output = (tmp_path / "out" / "train.jsonl").read_text()
    assert fake_generate == [sorted(SAMPLES)] and first.calls == EXPECTED_JUDGE_CALLS

    second = length_judge()
    stats = run(args, GenerationArguments(), judge=second, progress=False)
    assert fake_generate == [sorted(SAMPLES)] and second.calls == 0
    assert stats["last run"]["rank-000"] == {"generated": 0, "judge_calls": 0, "ranked": 0}
    assert (tmp_path / "out" / "train.jsonl").read_text() == output

    # rankings lost, judgments kept: everything is ranked again, nothing is paid again
    shutil.rmtree(tmp_path / "out" / ".work" / "ranked")
    third = length_judge()
    stats = run(args, GenerationArguments(), judge=third, progress=False)
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
        run(args, GenerationArguments(), judge=dying, progress=False)
    rest = length_judge(chunk_size=1)
    run(args, GenerationArguments(), judge=rest, progress=False)
    assert rest.calls == EXPECTED_JUDGE_CALLS - 7
    assert fake_generate == [sorted(SAMPLES)]  # samples were all written before judging started
    assert {r["prompt_id"] for r in read_rows(tmp_path / "out" / "train.jsonl")} == set(EXPECTED_PAIRS)


def test_other_sampling_settings_in_the_same_folder_are_refused(prompt_file, tmp_path, fake_generate):
    run(make_args(prompt_file, tmp_path / "out"), GenerationArguments(), judge=length_judge(), progress=False)
    with pytest.raises(ValueError, match=r"prompt id 'p\d' was sampled with n=5"):
        run(make_args(prompt_file, tmp_path / "out", n_to_rank=4), GenerationArguments(), judge=length_judge())
    with pytest.raises(ValueError, match="was sampled with model 'policy'"):
        run(make_args(prompt_file, tmp_path / "out", model_path="other"), GenerationArguments(),
                  judge=length_judge())


def test_judge_only_ranks_what_exists(prompt_file, tmp_path, fake_generate):
    stats = run(make_args(prompt_file, tmp_path / "out", judge_only=True), GenerationArguments(),
                      judge=length_judge(), progress=False)
    assert fake_generate == [] and stats["pairs"] == {"not generated": 8, "pairs": 0}


def test_two_shards_merge_without_duplicates(prompt_file, tmp_path, fake_generate):
    """world size 2 in one process: rank 0 and rank 1 each sample and judge their own prompt ids, then the merge."""
    args = make_args(prompt_file, tmp_path / "two")
    prompts = load_prompts(args.prompt_dataset, args.prompt_dataset_split)
    judge = length_judge()
    for rank in (0, 1):
        process_shard(args, GenerationArguments(), None, prompts, rank, 2, judge, progress=False)
    ws = Workspace(tmp_path / "two")
    shard_ids = [[r["id"] for r in ResumableJsonl(ws.generations(rank)).rows()] for rank in (0, 1)]
    assert sorted(shard_ids[0] + shard_ids[1]) == sorted(SAMPLES) and shard_ids[0] and shard_ids[1]
    assert all(shard_of(pid, 2) == rank for rank in (0, 1) for pid in shard_ids[rank])
    assert fake_generate == shard_ids  # each process asked only for its own prompts
    assert judge.calls == EXPECTED_JUDGE_CALLS
    stats = merge_and_save(args, prompts, judge.name)
    assert stats["pairs"]["pairs"] == 5 and stats["duplicates merged"] == {"samples": 0, "rankings": 0}

    single = make_args(prompt_file, tmp_path / "one")
    run(single, GenerationArguments(), judge=length_judge(), progress=False)
    assert read_rows(tmp_path / "two" / "train.jsonl") == read_rows(tmp_path / "one" / "train.jsonl")

    # a prompt written by two processes (e.g. runs with different world sizes) is merged once
    for folder in (ws.generations(0), ws.ranked(judge.name, 0)):
        first_line = folder.read_text().splitlines()[0]
        with open(folder.with_name("rank-001.jsonl"), "a") as handle:
            handle.write(first_line + "\n")
    stats = merge_and_save(args, prompts, judge.name)
    assert stats["duplicates merged"] == {"samples": 1, "rankings": 1}
    assert read_rows(tmp_path / "two" / "train.jsonl") == read_rows(tmp_path / "one" / "train.jsonl")
    # and a rerun with one process finds everything done
    again = length_judge()
    stats = run(args, GenerationArguments(), judge=again, progress=False)
    assert again.calls == 0 and stats["last run"]["rank-000"]["generated"] == 0


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
    rm = RewardModelJudge(str(reward_model_dir))
    for row in rows:
        scores = [j.value for j in rm.score_batch([(row["prompt"], s) for s in samples[row["prompt_id"]]])]
        assert row["score_chosen"] == pytest.approx(max(scores), abs=1e-5)
        assert row["score_rejected"] == pytest.approx(min(scores), abs=1e-5)
        assert row["chosen"][0]["content"] == samples[row["prompt_id"]][scores.index(max(scores))]
    mixed = mix_datasets({str(out): 1.0}, "preference", splits=["train_mix"]).train
    assert mixed["source"].count("original_chosen") == int(n_pairs * 0.5)
    assert (out / "run_args.yaml").is_file()

    # a rerun is free: nothing sampled, nothing judged (no model is even loaded)
    monkeypatch.setattr("chatalign.judges.models._SequenceClassifier.load", lambda self: pytest.fail("reward model loaded again"))
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
    ws = Workspace(out)
    shard_ids = [[r["id"] for r in ResumableJsonl(ws.generations(rank)).rows()] for rank in (0, 1)]
    assert sorted(shard_ids[0] + shard_ids[1]) == [f"p{i}" for i in range(8)]
    assert all(shard_of(pid, 2) == rank for rank in (0, 1) for pid in shard_ids[rank])
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
