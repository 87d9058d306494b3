"""chatalign.eval.harness and scripts/run_lm_eval.py: task sets, the leaderboards' averages and normalisation (the
Open LLM Leaderboard's documented examples), and lm_eval run offline on the shipped sample tasks, in process and
against a real `transformers serve`, resumable."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

from chatalign.eval import harness


def args_of(**kwargs) -> harness.LMEvalArguments:
    return harness.LMEvalArguments(**{"model_path": "m", **kwargs})


def test_task_sets_and_lions_fast_subset():
    assert harness.planned_tasks(args_of()) == harness.OPENLLM_V1
    assert [(t, s) for t, s, _ in harness.OPENLLM_V1] == [("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5),
                                                          ("truthfulqa_mc2", 0), ("winogrande", 5), ("gsm8k", 5)]
    fast = [t for t, _, _ in harness.planned_tasks(args_of(task_set="lion", fast_eval=True))]
    assert fast == ["arc_challenge", "hellaswag", "gsm8k", "bbh_cot_fewshot_date_understanding",
                    "bbh_cot_fewshot_movie_recommendation"]
    assert harness.planned_tasks(args_of(tasks=["gsm8k"], num_fewshot=3)) == [("gsm8k", 3, None)]
    with pytest.raises(ValueError, match="fast_eval keeps none"):
        harness.planned_tasks(args_of(tasks=["mmlu"], fast_eval=True))
    assert args_of(model_path="outputs/run-1/").output_path == "data/openllm/run-1"


def test_the_leaderboards_normalisation_reproduces_its_documented_examples():
    assert harness.normalise(0.6, 4) == pytest.approx(46.67, abs=0.005)  # GPQA in the leaderboard's docs
    assert harness.normalise(0.2, 4) == 0.0  # below the random baseline
    results = {f"leaderboard_musr_{t}": {"acc_norm,none": v}
               for t, v in (("murder_mysteries", 0.7), ("object_placements", 0.4), ("team_allocation", 0.6))}
    scores = harness.leaderboard_v2(results)
    assert scores["MuSR"] == pytest.approx(35.0)  # the docs' MuSR example: 40, 25 and 40
    assert scores["average"] is None and scores["BBH"] is None  # missing results stay missing
    full = {**results, **{f"leaderboard_bbh_{t}": {"acc_norm,none": 1.0} for t in harness.BBH_CHOICES},
            "leaderboard_ifeval": {"inst_level_strict_acc,none": 0.5, "prompt_level_strict_acc,none": 0.3},
            "leaderboard_math_hard": {"exact_match,none": 0.1}, "leaderboard_gpqa": {"acc_norm,none": 0.25},
            "leaderboard_mmlu_pro": {"acc,none": 0.55}}
    scores = harness.leaderboard_v2(full)
    assert (scores["BBH"], scores["IFEval"], scores["MATH Lvl 5"], scores["GPQA"]) == (100.0, 40.0, 10.0, 0.0)
    assert scores["MMLU-PRO"] == pytest.approx(50.0)
    assert scores["average"] == pytest.approx((40 + 100 + 10 + 0 + 35 + 50) / 6)


def test_v1_average_needs_all_six_tasks():
    results = {t: {(m if "," in m else f"{m},none"): 0.5 for m in [metric]} for t, _, metric in harness.OPENLLM_V1}
    perf = harness.performance(results, harness.OPENLLM_V1)
    assert perf["openllm_v1_average"] == pytest.approx(50.0) and perf["tasks"]["gsm8k"] == pytest.approx(50.0)
    del results["mmlu"]
    assert harness.performance(results, harness.OPENLLM_V1)["openllm_v1_average"] is None


def run(argv):
    return load_script("run_lm_eval").main(argv)


def test_sample_tasks_in_process_resumable(tmp_path, tiny_model_dir, monkeypatch):
    argv = ["--model_path", str(tiny_model_dir), "--task_set", "chatalign_sample", "--limit", "4",
            "--output_path", str(tmp_path / "out"), "--result_save_path", str(tmp_path / "summary.json"),
            "--backend", "transformers", "--batch_size", "2"]
    summary = run(argv)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    mc = results["results"]["chatalign_gsm8k_mc_sample"]
    assert mc["sample_len"] == 4 and 0.0 <= mc["acc,none"] <= 1.0
    assert summary["tasks"]["chatalign_gsm8k_mc_sample"] == pytest.approx(100 * mc["acc,none"])
    assert summary["tasks"]["chatalign_gsm8k_sample"] == pytest.approx(
        100 * results["results"]["chatalign_gsm8k_sample"]["exact_match,strict-match"])
    assert summary["model"]["tokenizer"] == str(tiny_model_dir) and summary["model"]["backend"] == "hf"
    samples = json.loads((tmp_path / "out" / "samples_chatalign_gsm8k_mc_sample.json").read_text())
    assert len(samples) == 4
    assert json.loads((tmp_path / "out" / "performance.json").read_text())["tasks"] == summary["tasks"]

    def no_rerun(*args, **kwargs):
        raise AssertionError("a task already done was run again")

    monkeypatch.setattr(harness, "run_task", no_rerun)
    assert run(argv)["tasks"] == summary["tasks"]  # nothing run, the model not even loaded
    with pytest.raises(AssertionError, match="run again"):
        run([*argv[:-2], "--batch_size", "2", "--limit", "3"])  # other settings: run again


def test_the_tokenizer_given_is_the_one_used(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    def argv(tokenizer, out):
        return ["--model_path", str(tiny_model_dir), "--tokenizer_name_or_path", str(tokenizer), "--tasks",
                "chatalign_gsm8k_mc_sample", "--limit", "2", "--output_path", str(tmp_path / out),
                "--result_save_path", str(tmp_path / f"{out}.json"), "--backend", "transformers"]

    assert run(argv(tiny_tokenizer_dir, "a"))["model"]["tokenizer"] == str(tiny_tokenizer_dir)
    with pytest.raises(OSError, match="no-tokenizer"):
        run(argv(tmp_path / "no-tokenizer", "b"))


def test_generation_through_a_real_transformers_serve(tmp_path, tiny_model_dir):
    summary = run(["--model_path", str(tiny_model_dir), "--tasks", "chatalign_gsm8k_sample", "--num_fewshot", "1",
                   "--limit", "2", "--output_path", str(tmp_path / "out"), "--result_save_path",
                   str(tmp_path / "s.json"), "--backend", "server", "--engine", "transformers"])
    assert summary["model"]["backend"] == "local-completions" and summary["model"]["endpoint"].startswith("http://")
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert results["chatalign_gsm8k_sample"]["sample_len"] == 2


def test_unknown_tasks_and_user_task_folders(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="unknown lm_eval task.*no_such_task"):
        run(["--model_path", str(tiny_model_dir), "--tasks", "no_such_task", "--output_path", str(tmp_path / "o")])
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)], "a": 0})
                            + "\n" for i in range(6)))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "doubling.yaml").write_text(
        "task: my_doubling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) +
        "\noutput_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n")
    summary = run(["--model_path", str(tiny_model_dir), "--tasks", "my_doubling", "--include_path", str(folder),
                   "--output_path", str(tmp_path / "o"), "--result_save_path", str(tmp_path / "s.json"),
                   "--backend", "transformers"])
    assert 0.0 <= summary["tasks"]["my_doubling"] <= 100.0
