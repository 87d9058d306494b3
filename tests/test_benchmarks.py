"""benchmarks/run.py --quick runs once in the default tier, only to check that it works (a benchmark is not a timed
test): every pair gives a record of the documented shape, and no pair invents a number it could not measure."""

import json
import re
import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_suite_runs_and_writes_its_records(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--no_results",
                          "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [set(r) for r in records] == [{"pair", "a", "b", "ratio", "goal", "met", "detail"}] * len(records)
    assert len(records) == 9 and "| pair | a | b | ratio | goal | met |" in run.stdout
    assert re.search(r"the suite took \d+ s", run.stdout)  # --quick's budget is 3 minutes: said, not asserted
    for r in records:
        if r["ratio"] is None:  # not measured: says why, claims nothing
            assert r["met"] is None and r["detail"]["missing"]
        else:
            assert r["ratio"] > 0 and isinstance(r["met"], bool)
    by_pair = {r["pair"].split(",")[0]: r for r in records}
    assert by_pair["MT-Bench judging"]["detail"] == {"cold_calls": 160, "rerun_calls": 0}


def test_the_gpu_flag_is_refused_rather_than_run_the_cpu_workload_under_a_gpus_name():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--gpu", "--no_results"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "--gpu: the GPU suite" in run.stderr and "not built" in run.stderr
    assert "| pair |" not in run.stdout
