"""MT-Bench scores from FastChat judgment files, exactly as FastChat's show_result.py computes them.

    python scripts/show_mt_bench_result.py --input_file data/mt_bench/model_judgment/gpt-4_single.jsonl
    python scripts/show_mt_bench_result.py --input_file run1/gpt-4_single.jsonl run2/gpt-4_single.jsonl --format json
    python scripts/show_mt_bench_result.py --input_file gpt-4_pair.jsonl --mode pairwise-baseline

Single mode: rows with score -1 dropped; turn 1 and turn 2 are means over their rows; FastChat's average is the mean
over all remaining rows of both turns. Also the mean per category (both turns) and LION's overall (the mean of the 8
category means), labelled apart. Several input files are runs (--num_runs of run_mt_bench.py): each model's scores
are reported as mean, standard deviation and median over them. Pairwise modes: FastChat's win, loss and tie counts
and (adjusted) win rates. A PNG (a radar chart of the categories, or win-rate bars) goes to --plot_path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser

logger = logging.getLogger("show_mt_bench_result")


@dataclass
class ShowArguments:
    input_file: list[str] = field(default_factory=list, metadata={"help": "Judgment file(s), one per run."})
    mode: str = field(default="single", metadata={"help": "single | pairwise-baseline | pairwise-all",
                                                  "choices": ["single", "pairwise-baseline", "pairwise-all"]})
    baseline_model: str = field(default="gpt-3.5-turbo", metadata={"help": "Baseline of pairwise-baseline."})
    model_list: list[str] | None = field(default=None, metadata={"help": "Only these models."})
    question_file: str | None = field(default=None, metadata={"help": "For categories (default: the shipped one)."})
    dedup: bool = field(default=False, metadata={"help": "Count each (model, question, turn) once (the last row)."})
    format: str = field(default="table", metadata={"help": "table | json", "choices": ["table", "json"]})
    plot_path: str | None = field(default=None, metadata={"help": "PNG to draw (default: beside the first file)."})

    def __post_init__(self):
        if not self.input_file:
            raise ValueError("give --input_file: a FastChat judgment file (model_judgment/<judge>_single.jsonl)")


def main(argv=None):
    (args,) = ChatalignParser([ShowArguments]).parse(argv)
    from chatalign.eval import mt_bench
    from chatalign.eval.reporting import bar_plot, format_table, radar_plot, run_statistics

    runs = []
    for path in args.input_file:
        rows, judge = mt_bench.load_judgments(path)
        if args.model_list:
            rows = [r for r in rows if r.get("model", r.get("model_1")) in args.model_list]
        runs.append((rows, judge))
    judges = {judge for _, judge in runs}
    if len(judges) > 1:
        raise ValueError(f"the input files were judged by {', '.join(sorted(map(str, judges)))}; scores of "
                         "different judges are never combined")
    plot = Path(args.plot_path or Path(args.input_file[0]).with_suffix(".png"))

    if args.mode != "single":
        baseline = args.baseline_model if args.mode == "pairwise-baseline" else None
        results = mt_bench.pair_results(runs[0][0], baseline)
        document = {"bench": "mt_bench", "mode": args.mode, "judge": judges.pop(), "baseline": baseline,
                    "models": results}
        table = format_table([{"model": m, **r} for m, r in sorted(results.items(),
                                                                   key=lambda kv: -kv[1]["win_rate_adjusted"])],
                             ["model", "win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"],
                             f"MT-Bench pairwise ({args.mode}), judge {document['judge']}", digits=4)
        bar_plot(plot, list(results), [r["win_rate_adjusted"] for r in results.values()],
                 f"MT-Bench win rate (ties half), judge {document['judge']}", "win rate (adjusted)")
    else:
        questions = mt_bench.load_questions(args.question_file or mt_bench.MT_BENCH_DIR / "question.jsonl")
        per_run = [mt_bench.single_scores(rows, questions, dedup=args.dedup) for rows, _ in runs]
        models = sorted({m for scores in per_run for m in scores})
        results = {}
        for model in models:
            scored = [scores[model] for scores in per_run if model in scores]
            result = dict(scored[0]) if len(scored) == 1 else {"runs": len(scored)}
            for key in ("turn_1", "turn_2", "average"):
                result[key] = run_statistics([s[key] for s in scored])["mean"]
            result["categories"] = {c: run_statistics([s["categories"][c] for s in scored])["mean"]
                                    for c in mt_bench.CATEGORIES}
            overall = [mt_bench.overall_of_categories(s["categories"]) for s in scored]
            result["lion_overall"] = run_statistics(overall)["mean"]
            if len(scored) > 1:
                result["over_runs"] = {"average": run_statistics([s["average"] for s in scored]),
                                       "lion_overall": run_statistics(overall)}
            results[model] = result
        document = {"bench": "mt_bench", "mode": "single", "judge": judges.pop(), "runs": len(runs),
                    "dedup": args.dedup, "models": results}
        ranked = sorted(results, key=lambda m: -(results[m]["average"] or 0.0))
        table = format_table([{"model": m, "turn 1": results[m]["turn_1"], "turn 2": results[m]["turn_2"],
                               "average (FastChat)": results[m]["average"],
                               "overall (LION, mean of categories)": results[m]["lion_overall"]} for m in ranked],
                             ["model", "turn 1", "turn 2", "average (FastChat)", "overall (LION, mean of categories)"],
                             f"MT-Bench, judge {document['judge']}, {len(runs)} run(s)")
        table += "\n\n" + format_table([{"category": c, **{m: results[m]["categories"][c] for m in ranked}}
                                        for c in mt_bench.CATEGORIES], ["category", *ranked], "per category")
        radar_plot(plot, mt_bench.CATEGORIES, {m: [results[m]["categories"][c] for c in mt_bench.CATEGORIES]
                                               for m in ranked}, f"MT-Bench, judge {document['judge']}")
    document["plot"] = str(plot)
    print(json.dumps(document, indent=2) if args.format == "json" else table + f"\n\nplot: {plot}")
    return document


if __name__ == "__main__":
    main()
