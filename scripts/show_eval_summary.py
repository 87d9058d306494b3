"""One table (and a plot) of several checkpoints' benchmark summaries, side by side.

    python scripts/show_eval_summary.py --model_paths outputs/sft outputs/dpo       # reads <model>/eval_results/*.json
    python scripts/show_eval_summary.py --summary_files a/mt_bench.json b/mt_bench.json --format json

Each summary is what run_mt_bench, run_alpaca_eval, run_arena_hard and run_lm_eval write. The table shows the
headline scores of each (MT-Bench's FastChat average and LION's overall, AlpacaEval's win rates, Arena-Hard's score,
the lm-eval averages), one row per model, and under it the judge of each judged benchmark, so that scores by different
judges are never read as one. --note adds a line under the title (the demo marks its judge so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser


@dataclass
class ShowArguments:
    model_paths: list[str] | None = field(default=None, metadata={"help": "Checkpoints with eval_results/."})
    summary_files: list[str] | None = field(default=None, metadata={"help": "Summary JSON files."})
    title: str = field(default="Evaluation", metadata={"help": "The table's title."})
    note: str | None = field(default=None, metadata={"help": "A line printed under the title."})
    format: str = field(default="table", metadata={"help": "table | json", "choices": ["table", "json"]})
    plot_path: str | None = field(default=None, metadata={"help": "PNG of the scores (default: none)."})

    def __post_init__(self):
        if not self.model_paths and not self.summary_files:
            raise ValueError("give --model_paths (folders with eval_results/) or --summary_files")


def main(argv=None):
    (args,) = ChatalignParser([ShowArguments]).parse(argv)
    from chatalign.eval.reporting import format_table, grouped_bar_plot, headline_scores

    files = [Path(f) for f in args.summary_files or []]
    for folder in args.model_paths or []:
        found = sorted((Path(folder) / "eval_results").glob("*.json"))
        if not found:
            raise FileNotFoundError(f"{folder}/eval_results: no summaries (run the run_* eval scripts first)")
        files += found
    rows, judges = {}, {}
    for path in files:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if "bench" not in summary or "model_id" not in summary:
            raise ValueError(f"{path}: not a chatalign eval summary (no 'bench' and 'model_id')")
        rows.setdefault(summary["model_id"], {}).update(headline_scores(summary))
        if summary.get("judge"):
            judged = f"{summary['judge']}" + (f" ({summary['scoring']} scoring)" if summary.get("scoring") else "")
            judges.setdefault(summary["bench"], set()).add(judged)
    # a column no model has a number in is left out (e.g. LC without df_gamed.csv, LION's overall on a subset)
    columns = [c for c in dict.fromkeys(c for scores in rows.values() for c in scores)
               if any(scores.get(c) is not None for scores in rows.values())]
    document = {"title": args.title, "note": args.note, "models": rows,
                "judges": {bench: sorted(names) for bench, names in judges.items()}}
    if args.plot_path:
        grouped_bar_plot(args.plot_path, columns, {m: [rows[m].get(c) for c in columns] for m in rows},
                         args.title + (f" ({args.note})" if args.note else ""), "score")
        document["plot"] = args.plot_path
    if args.format == "json":
        print(json.dumps(document, indent=2))
        return document
    table = format_table([{"model": m, **scores} for m, scores in rows.items()], ["model", *columns], args.title)
    lines = [table] if not args.note else [table.split("\n", 1)[0], args.note, table.split("\n", 1)[1]]
    lines += [f"judge of {bench}: {', '.join(sorted(names))}" for bench, names in judges.items()]
    if args.plot_path:
        lines.append(f"plot: {args.plot_path}")
    print("\n".join(lines))
    return document


if __name__ == "__main__":
    main()
