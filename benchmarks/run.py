"""chatalign's benchmark suite: each pair of code paths measured in one process, as a ratio (benchmarks/pairs.py).

    python benchmarks/run.py                 # every pair, full sizes (make bench)
    python benchmarks/run.py --quick         # the smallest sizes (CI runs this once, only to check that it works)
    python benchmarks/run.py --pairs sft,memory --json out.json

Prints a table and appends it, with the machine, the date and the commit, to benchmarks/RESULTS.md. A pair that could
not be measured is listed as missing with the reason, never as a number. The GPU suite (--gpu: bf16, a 1B model,
vLLM generation) is not built yet: no GPU has been lent to build and check it on, so --gpu is refused on every machine
rather than run the CPU workload under a GPU's name; this suite never estimates a GPU figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
HERE = Path(__file__).resolve().parent


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}"


def commit() -> str:
    """The commit measured; "-dirty" when the working tree held changes beyond it."""
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True,
                         cwd=HERE)
    return out.stdout.strip() or "unknown"


def fmt(value, spec=".2f") -> str:
    return "missing" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def table(records: list[dict]) -> str:
    lines = ["| pair | a | b | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for r in records:
        met = "-" if r["met"] is None else "yes" if r["met"] else "no"
        lines.append(f"| {r['pair']} | {fmt(r['a'])} | {fmt(r['b'])} | {fmt(r['ratio'])} | {r['goal']} | {met} |")
    notes = []
    for r in records:
        extra = {k: v for k, v in r["detail"].items() if k != "lengths"}
        notes.append(f"- {r['pair']}: " + ", ".join(f"{k} {fmt(v, '.3g') if isinstance(v, float) else v}"
                                                  for k, v in extra.items()))
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="The smallest sizes (under 3 minutes on 2 cores).")
    parser.add_argument("--pairs", default="all", help="Comma-separated subset of: sft, dpo, kto, reference, "
                                                        "memory, fused_head, generation, data, mt_bench.")
    parser.add_argument("--json", help="Write one record per pair (pair, a, b, ratio, goal, met, detail).")
    parser.add_argument("--gpu", action="store_true", help="The GPU suite: not built yet, refused (see above).")
    parser.add_argument("--no_results", action="store_true", help="Do not append to benchmarks/RESULTS.md.")
    args = parser.parse_args(argv)

    import torch
    from common import matmul_peak
    from pairs import PAIRS

    if args.gpu:
        # Every pair below runs the CPU workload (fp32, the 4-layer model); under --gpu it would be written up with the
        # GPU's name. Refused until the GPU suite is built and checked on a lent GPU.
        where = "this machine has no CUDA GPU" if not torch.cuda.is_available() else "a GPU is here"
        raise SystemExit(f"--gpu: the GPU suite (bf16, a 1B Llama, flash/SDPA varlen, vLLM generation) is not built "
                         f"yet ({where}); the pairs run only the CPU workload, and no GPU figure is written from it")
    torch.set_num_threads(2)
    names = list(PAIRS) if args.pairs == "all" else [p.strip() for p in args.pairs.split(",")]
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        raise SystemExit(f"unknown pair(s) {unknown}; known: {', '.join(PAIRS)}")
    started = time.perf_counter()
    peak = matmul_peak()
    records = []
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        records.append(PAIRS[name](args.quick, peak))
    header = (f"## {datetime.date.today()} commit {commit()}{' (quick)' if args.quick else ''}\n\n"
              f"Machine: {machine()}; fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s; "
              f"the suite took {time.perf_counter() - started:.0f} s.\n")
    text = header + "\n" + table(records) + "\n"
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2, default=str))
    if not args.no_results:
        with (HERE / "RESULTS.md").open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    return records


if __name__ == "__main__":
    main()
