"""The slow tier (`make test-slow`): the embedded SmolLM2 default through the demo's SFT -> DPO -> samples chain."""

import json
import math
import os
import subprocess

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_trains_smollm2_end_to_end(smollm2_dir, tmp_path):
    env = dict(os.environ, BASE=str(smollm2_dir), OUT_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["bash", str(REPO / "recipes/smollm2-135m/demo.sh"), "--max_steps=2", "--report_to=none"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("sft", "dpo"):
        out = tmp_path / f"smollm2-135m-{stage}-full"
        results = json.loads((out / "train_results.json").read_text())
        assert math.isfinite(results["train_loss"])
        assert (out / "model.safetensors").is_file() and (out / "run_args.yaml").is_file()
    history = json.loads((tmp_path / "smollm2-135m-dpo-full/trainer_state.json").read_text())["log_history"]
    assert any("rewards/margins" in h for h in history)
    samples = json.loads((tmp_path / "demo_samples.json").read_text())
    assert len(samples) == 3 and all(len(row) == 4 for row in samples)  # prompt + 3 checkpoints
    assert "Paris" in samples[0][str(smollm2_dir)]
    assert "### What is the capital of France?" in proc.stdout
    # the evaluation: every checkpoint scored, one table labelled as a demo judge's, and the plot
    for name in (smollm2_dir.name, "smollm2-135m-sft-full", "smollm2-135m-dpo-full"):
        mt = json.loads((tmp_path / "demo_eval" / "results" / name / "mt_bench.json").read_text())
        assert mt["runs"][0]["unparseable"] == 0 and 1 <= mt["over_runs"]["average"]["mean"] <= 10
    alpaca = json.loads((tmp_path / "demo_eval/results/smollm2-135m-dpo-full/alpaca_eval.json").read_text())
    assert alpaca["baseline"] == smollm2_dir.name and 0 <= alpaca["runs"][0]["win_rate"] <= 100
    assert "DEMO JUDGE" in proc.stdout and "MT-Bench (FastChat avg)" in proc.stdout
    assert (tmp_path / "demo_eval" / "summary.png").stat().st_size > 1000
