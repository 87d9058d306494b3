"""The slow tier (`make test-slow`): each benchmark end to end on the embedded SmolLM2 default, judged by a local
judge (the same model: in process by logprobs for MT-Bench and AlpacaEval, served by `transformers serve` for
Arena-Hard), and lm-eval on the shipped sample tasks."""

import json

import pytest
from conftest import load_script

pytestmark = pytest.mark.slow


def test_mt_bench_with_a_local_logprob_judge(smollm2_dir, tmp_path):
    summary = load_script("run_mt_bench").main(
        ["--model_path", str(smollm2_dir), "--judge_model", str(smollm2_dir), "--judge_scoring", "logprobs",
         "--categories", "writing", "stem", "--per_category", "1", "--gen_max_tokens", "32", "--judge_max_tokens", "16",
         "--backend", "transformers", "--bench_dir", str(tmp_path / "mt"), "--result_save_path",
         str(tmp_path / "mt.json")])
    (run,) = summary["runs"]
    assert run["unparseable"] == 0 and run["rows"] == 4 and 1 <= run["average"] <= 10
    assert summary["judge_endpoint"] == "local checkpoint" and summary["scoring"] == "logprobs"


def test_alpaca_eval_with_a_local_judge(smollm2_dir, tmp_path, repo_root):
    instructions = json.loads((repo_root / "data/demo_eval/alpaca_style_instructions.json").read_text())[:3]
    reference = tmp_path / "terse.json"
    reference.write_text(json.dumps([{"instruction": r["instruction"], "output": "No.", "generator": "terse"}
                                     for r in instructions]))
    summary = load_script("run_alpaca_eval").main(
        ["--model_path", str(smollm2_dir), "--reference_outputs", str(reference), "--judge_model", str(smollm2_dir),
         "--gen_temperature", "0", "--gen_max_tokens", "32", "--backend", "transformers",
         "--output_dir", str(tmp_path / "ae"), "--result_save_path", str(tmp_path / "ae.json")])
    (run,) = summary["runs"]
    assert run["n_total"] == 3 and 0 < run["win_rate"] < 100  # logprob-weighted: never exactly 0 or 100
    assert summary["judge_calls_this_run"] == 3 and summary["baseline"] == "terse"


def test_arena_hard_with_a_served_local_judge(smollm2_dir, tmp_path):
    summary = load_script("run_arena_hard").main(
        ["--model_path", str(smollm2_dir), "--first_n", "2", "--gen_max_tokens", "32", "--backend", "transformers",
         "--judge_model", str(smollm2_dir), "--judge_engine", "transformers", "--judge_max_tokens", "48",
         "--bench_dir", str(tmp_path / "ah"), "--result_save_path", str(tmp_path / "ah.json")],
        confirm=lambda _: pytest.fail("a local judge is never confirmed"))
    rows = [json.loads(line) for line in
            (tmp_path / "ah/arena-hard-v0.1/model_judgment" / smollm2_dir.name / f"{smollm2_dir.name}.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["games"]) == 2 for r in rows)
    assert summary["runs"][0]["unparsed_games"] == sum(g["score"] is None for r in rows for g in r["games"])


def test_lm_eval_on_the_sample_tasks(smollm2_dir, tmp_path):
    summary = load_script("run_lm_eval").main(
        ["--model_path", str(smollm2_dir), "--task_set", "chatalign_sample", "--limit", "8", "--backend",
         "transformers", "--output_path", str(tmp_path / "lm"), "--result_save_path", str(tmp_path / "lm.json")])
    assert set(summary["tasks"]) == {"chatalign_gsm8k_mc_sample", "chatalign_gsm8k_sample"}
    assert all(0 <= v <= 100 for v in summary["tasks"].values())
