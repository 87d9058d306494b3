"""benchmarks/run.py --quick runs once in the default tier, only to check that it works (a benchmark is not a timed
test): every pair gives a record of the documented shape, and no pair invents a number it could not measure."""

import json
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
    assert len(records) == 8 and "| pair | a | b | ratio | goal | met |" in run.stdout
    for r in records:
        if r["ratio"] is None:  # not measured: says why, claims nothing
            assert r["met"] is None and r["detail"]["missing"]
        else:
            assert r["ratio"] > 0 and isinstance(r["met"], bool)
    by_pair = {r["pair"].split(",")[0]: r for r in records}
    assert by_pair["MT-Bench judging"]["detail"] == {"cold_calls": 160, "rerun_calls": 0}
