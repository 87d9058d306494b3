"""AlpacaEval results from alpaca_eval annotation files, with alpaca_eval's own metrics.

    python scripts/show_alpaca_eval_result.py --annotations_file outputs/alpaca_eval/*/weighted_alpaca_eval_gpt4_turbo/annotations.json
    python scripts/show_alpaca_eval_result.py --annotations_file run1/.../annotations.json run2/.../annotations.json \
        --format json --lc_data_path df_gamed.csv

Each file is one model's annotations against the baseline (alpaca_eval's results/<model>/<annotator>/annotations.json);
files of the same model (generator_2) are runs, reported as mean, standard deviation and median. Metrics: alpaca_eval's
get_winrate (win rate, standard error, discrete win rate, wins, draws), the average output length as the leaderboard
gives it, and the length-controlled win rate where df_gamed.csv is at hand (else missing, with the reason). A PNG of the
win rates with their standard errors goes to --plot_path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser

SCORES = ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "lc_standard_error",
          "avg_length", "n_wins", "n_wins_base", "n_draws", "n_total")


@dataclass
class ShowArguments:
    annotations_file: list[str] = field(default_factory=list, metadata={"help": "alpaca_eval annotations.json file(s)."})
    lc_data_path: str | None = field(default=None, metadata={"help": "df_gamed.csv for the LC win rate."})
    format: str = field(default="table", metadata={"help": "table | json", "choices": ["table", "json"]})
    plot_path: str | None = field(default=None, metadata={"help": "PNG to draw (default: beside the first file)."})

    def __post_init__(self):
        if not self.annotations_file:
            raise ValueError("give --annotations_file: alpaca_eval's <model>/<annotator>/annotations.json")


def main(argv=None):
    (args,) = ChatalignParser([ShowArguments]).parse(argv)
    from chatalign.eval import alpaca
    from chatalign.eval.reporting import bar_plot, format_table, run_statistics

    by_model: dict[str, list[dict]] = {}
    annotators, baselines = set(), set()
    for path in args.annotations_file:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("instruction", "output_1", "output_2", "generator_2", "preference"):
            if not rows or key not in rows[0]:
                raise ValueError(f"{path} row 0, field '{key}': missing; not an alpaca_eval annotations file")
        models = {r["generator_2"] for r in rows}
        if len(models) != 1:
            raise ValueError(f"{path}: annotations of {len(models)} models ({', '.join(sorted(models))}); one per file")
        annotators |= {r.get("annotator") for r in rows}
        baselines |= {r.get("generator_1") for r in rows}
        by_model.setdefault(models.pop(), []).append(alpaca.metrics(rows, None, args.lc_data_path))
    if len(annotators) > 1 or len(baselines) > 1:
        raise ValueError(f"the files mix annotators {sorted(map(str, annotators))} or baselines "
                         f"{sorted(map(str, baselines))}; results of different judges are never combined")

    results = {}
    for model, runs in by_model.items():
        result = {key: run_statistics([r.get(key) for r in runs])["mean"] for key in SCORES}
        result["lc_unavailable"] = next((r["lc_unavailable"] for r in runs if r.get("lc_unavailable")), None)
        if len(runs) > 1:
            result["over_runs"] = {key: run_statistics([r.get(key) for r in runs]) for key in SCORES[:4]}
        results[model] = result
    annotator, baseline = annotators.pop(), baselines.pop()
    ranked = sorted(results, key=lambda m: -(results[m]["win_rate"] or 0.0))
    plot = Path(args.plot_path or Path(args.annotations_file[0]).with_name("alpaca_eval.png"))
    bar_plot(plot, ranked, [results[m]["win_rate"] for m in ranked], f"AlpacaEval vs {baseline}, {annotator}",
             "win rate (%)", errors=[(results[m]["win_rate"] - results[m]["standard_error"],
                                      results[m]["win_rate"] + results[m]["standard_error"]) for m in ranked])
    document = {"bench": "alpaca_eval", "annotator": annotator, "baseline": baseline, "models": results,
                "plot": str(plot)}
    table = format_table([{"model": m, "win rate": results[m]["win_rate"], "std err": results[m]["standard_error"],
                           "discrete": results[m]["discrete_win_rate"],
                           "LC win rate": results[m]["length_controlled_winrate"],
                           "avg length": results[m]["avg_length"], "runs": len(by_model[m])} for m in ranked],
                         ["model", "win rate", "std err", "discrete", "LC win rate", "avg length", "runs"],
                         f"AlpacaEval vs {baseline}, annotator {annotator}")
    notes = sorted({r["lc_unavailable"] for r in results.values() if r["lc_unavailable"]})
    print(json.dumps(document, indent=2) if args.format == "json"
          else table + "".join(f"\nLC missing: {n}" for n in notes) + f"\n\nplot: {plot}")
    return document


if __name__ == "__main__":
    main()
