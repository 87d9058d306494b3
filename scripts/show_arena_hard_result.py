"""Arena-Hard-Auto scores from judgment files, by each bench's own procedure.

    python scripts/show_arena_hard_result.py --judgment_dir outputs/arena_hard/arena-hard-v0.1/model_judgment \
        --judge_name gpt-4o-2024-05-13 --baseline gpt-4-0314 --format json
    python scripts/show_arena_hard_result.py --judgment_dir D --bench arena-hard-v2.0 --style_control length markdown

--judgment_dir holds one <model>.jsonl per model (or, with --judge_name, a <judge>/ folder of them), in the legacy
(question_id, games) or current (uid, games) layout. arena-hard-v0.1: both games as battles, >> weighted 3, an unparsed
game dropped alone, Bradley-Terry by logistic regression anchored at the baseline (50), 100 bootstrap rounds seeded 42,
2.5/97.5 percentiles. arena-hard-v2.0: per-vote scores, the bootstrap mean and 5/95 percentiles per category, and with
--style_control the style-controlled fit (the answers' metadata from --answer_dir). A PNG of the scores with their
intervals goes to --plot_path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser


@dataclass
class ShowArguments:
    judgment_dir: str | None = field(default=None, metadata={"help": "Folder of <model>.jsonl judgment files."})
    judge_name: str | None = field(default=None, metadata={"help": "Read <judgment_dir>/<judge_name>/."})
    bench: str = field(default="auto", metadata={"help": "auto (legacy layout: v0.1; current: v2.0) | "
                                                         "arena-hard-v0.1 | arena-hard-v2.0",
                                                 "choices": ["auto", "arena-hard-v0.1", "arena-hard-v2.0"]})
    baseline: str | None = field(default=None, metadata={"help": "v0.1's baseline (default gpt-4-0314); v2.0 reads "
                                                                 "each category's from the judgments."})
    answer_dir: str | None = field(default=None, metadata={"help": "model_answer/ folder (average tokens, style "
                                                                   "metadata; default: beside judgment_dir)."})
    style_control: list[str] | None = field(default=None, metadata={"help": "v2.0: length and/or markdown."})
    seed: int = field(default=42, metadata={"help": "Bootstrap seed."})
    format: str = field(default="table", metadata={"help": "table | json", "choices": ["table", "json"]})
    plot_path: str | None = field(default=None, metadata={"help": "PNG to draw (default: in judgment_dir)."})

    def __post_init__(self):
        if not self.judgment_dir:
            raise ValueError("give --judgment_dir: a folder of Arena-Hard judgment files (<model>.jsonl)")


def main(argv=None):
    (args,) = ChatalignParser([ShowArguments]).parse(argv)
    from chatalign.eval import arena_hard as ah
    from chatalign.eval.reporting import bar_plot, format_table
    from chatalign.store import read_jsonl

    folder = Path(args.judgment_dir) / (args.judge_name or "")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no judgment files (*.jsonl)")
    rows, judge = ah.load_judgments(files)
    legacy = "question_id" in read_jsonl(files[0])[0]
    bench = args.bench if args.bench != "auto" else (ah.V01 if legacy else ah.V2)
    if bench == ah.V01:
        baselines = {ah.V01: args.baseline or ah.BASELINE_V01}
        for row in rows:
            row["category"] = ah.V01
    else:
        baselines = {r["category"]: r["baseline"] for r in rows if r.get("baseline")}
        if args.baseline:
            baselines = {c: args.baseline for c in {r["category"] for r in rows}}
    scores = ah.bench_scores(bench, rows, baselines, args.seed)

    answer_dir = Path(args.answer_dir) if args.answer_dir else Path(args.judgment_dir).parent / "model_answer"
    answers = {}
    for path in sorted(answer_dir.glob("*.jsonl")) if answer_dir.is_dir() else []:
        model, by_id = ah.load_answers(path)
        answers[model] = by_id
    for by_model in scores.values():
        for model, result in by_model.items():
            lengths = [ah.answer_token_len(row) for row in answers.get(model, {}).values()]
            result["avg_tokens"] = (int(sum(lengths) / len(lengths)) if lengths and None not in lengths else None)
    style = {}
    if args.style_control and bench == ah.V2:
        metadata = {m: {q: r.get("metadata") for q, r in by_id.items()} for m, by_id in answers.items()}
        for category, baseline in baselines.items():
            fitted, why = ah.style_scores(rows, category, baseline, metadata, args.style_control, args.seed)
            style[category] = fitted if fitted else {"unavailable": why}

    document = {"bench": bench, "judge": judge, "baselines": baselines, "categories": scores}
    if style:
        document["style_controlled"] = style
    tables, labels, values, errors = [], [], [], []
    for category, by_model in scores.items():
        ranked = sorted(by_model, key=lambda m: -by_model[m]["score"])
        tables.append(format_table([{"model": m, "score (%)": by_model[m]["score"], "lower": by_model[m]["lower"],
                                     "upper": by_model[m]["upper"], "avg tokens": by_model[m]["avg_tokens"]}
                                    for m in ranked], ["model", "score (%)", "lower", "upper", "avg tokens"],
                                   f"{bench} {category} vs {baselines[category]}, judge {judge}"))
        for m in ranked:
            labels.append(m if len(scores) == 1 else f"{m} ({category})")
            values.append(by_model[m]["score"])
            errors.append((by_model[m]["lower"], by_model[m]["upper"]))
    plot = Path(args.plot_path or folder / "arena_hard.png")
    bar_plot(plot, labels, values, f"{bench}, judge {judge}", "score vs baseline (%)", errors=errors)
    document["plot"] = str(plot)
    for category, fitted in style.items():
        if "unavailable" in fitted:
            tables.append(f"style control ({category}): unavailable, {fitted['unavailable']}")
        else:
            models = [m for m in fitted if not m.startswith("_")]
            tables.append(format_table([{"model": m, **fitted[m]} for m in models], ["model", "score", "lower",
                                                                                      "upper"],
                                       f"style controlled ({', '.join(args.style_control)}), {category}"))
    print(json.dumps(document, indent=2) if args.format == "json" else "\n\n".join(tables) + f"\n\nplot: {plot}")
    return document


if __name__ == "__main__":
    main()
