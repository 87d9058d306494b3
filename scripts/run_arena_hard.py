"""Arena-Hard-Auto (v0.1 or v2.0) for a model, with any judge; resumable, in upstream's layout.

    python scripts/run_arena_hard.py --model_path outputs/smollm2-135m-dpo-full                 # v0.1, gpt-4o-2024-05-13
    python scripts/run_arena_hard.py --model_path M --judge_model gpt-4-1106-preview            # the official v0.1 judge
    python scripts/run_arena_hard.py --model_path M --bench arena-hard-v2.0 --style_control length markdown
    python scripts/run_arena_hard.py --model_path M --judge_model Qwen/Qwen2.5-72B-Instruct \
        --judge_base_url http://127.0.0.1:8000/v1 --num_runs 3

Answers come from the generation layer (--backend, --base_url, --gen_parallel, --gen_chat_template, ...), at
upstream's temperature 0 and 4,096 tokens; each question is judged twice (the baseline as A, then as B) with the
bench's prompts, every call cached (<bench_dir>/.work/judgments.jsonl) and, for a paid endpoint, estimated and
confirmed first (--y). v0.1 is against gpt-4-0314; v2.0's hard prompts against o3-mini-2025-01-31 (creative writing
needs gemini-2.0-flash-001's answers in <bench_dir>/arena-hard-v2.0/model_answer/, not shipped). Scores follow each
bench's own procedure (chatalign.eval.arena_hard); show_arena_hard_result.py reads the files again. The summary goes to
<model_path>/eval_results/arena_hard.json or --result_save_path; --to_wandb logs it to the training run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chatalign.configs import ChatalignParser
from chatalign.eval.arena_hard_run import ArenaHardArguments
from chatalign.eval.judge import EvalJudgeArguments
from chatalign.eval.results import EvalOutputArguments
from chatalign.generation.params import GenerationArguments

logger = logging.getLogger("run_arena_hard")


def make_parser() -> ChatalignParser:
    return ChatalignParser([ArenaHardArguments, EvalJudgeArguments, GenerationArguments, EvalOutputArguments])


def main(argv=None, confirm=input):
    args, judge_args, gen_args, out_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.eval import arena_hard as ah
    from chatalign.eval.arena_hard_run import (
        baseline_answers,
        generate_answers,
        judge_games,
        run_folder,
        select_questions,
    )
    from chatalign.eval.judge import EvalJudge, with_default_judge
    from chatalign.eval.reporting import format_table, run_statistics
    from chatalign.eval.results import log_to_wandb, save_summary, summary_path, wandb_run_of
    from chatalign.store import content_hash

    # 1. Questions, the judge's settings and the baselines' answers, checked before anything is generated or paid for
    settings = ah.judge_settings(args.bench)
    questions = select_questions(args, settings)
    baselines = baseline_answers(args, settings, questions)
    wandb_run = wandb_run_of(args.model_path) if out_args.to_wandb else None
    judge_args = with_default_judge(judge_args, ah.DEFAULT_JUDGE[args.bench], int(settings["max_tokens"]))
    judge = EvalJudge(judge_args, Path(args.bench_dir) / ".work" / "judgments.jsonl", gen_args, confirm=confirm)

    # 2. Per run: answers (generated, or read with --judge_only), both games per question, the bench's scores
    runs = []
    for run in range(args.num_runs):
        answer_file = run_folder(args, run) / "model_answer" / f"{args.model_id}.jsonl"
        if args.judge_only:
            if not answer_file.is_file():
                raise FileNotFoundError(f"--judge_only: no answers at {answer_file}")
            _, rows = ah.load_answers(answer_file)
            missing = [q["id"] for q in questions if q["id"] not in rows]
            if missing:
                raise ValueError(f"{answer_file}: no answer to question {missing[0]} ({len(missing)} missing)")
            answers = {qid: ah.answer_text(row) for qid, row in rows.items()}
        else:
            answers = generate_answers(args, questions, gen_args, run)
        rows = judge_games(args, settings, questions, answers, baselines, judge, run)
        judged, _ = ah.load_judgments([run_folder(args, run) / "model_judgment" / judge.file_stem /
                                       f"{args.model_id}.jsonl"])
        of_category = {c: b["model"] for c, b in baselines.items()}
        scores = {c: s.get(args.model_id, {}) for c, s in ah.bench_scores(args.bench, judged, of_category,
                                                                           args.seed).items()}
        result = {"categories": scores, "unparsed_games": sum(g["score"] is None for r in rows for g in r["games"])}
        if args.style_control:
            _, mine = ah.load_answers(answer_file)
            metadata = {args.model_id: {q: r.get("metadata") for q, r in mine.items()}}
            for category, baseline in of_category.items():
                _, base_rows = ah.load_answers(ah.bench_dir(args.bench) / "model_answer" / f"{baseline}.jsonl")
                metadata[baseline] = {q: r.get("metadata") for q, r in base_rows.items()}
                styled, why = ah.style_scores(judged, category, baseline, metadata, args.style_control, args.seed)
                result.setdefault("style_controlled", {})[category] = (
                    (styled or {}).get(args.model_id) if styled else {"unavailable": why})
        runs.append(result)

    # 3. The summary, with the judge's provenance
    categories = sorted({c for r in runs for c in r["categories"]})
    over = {c: run_statistics([r["categories"][c].get("score") for r in runs]) for c in categories}
    prompt_version = f"arena-hard-auto:{args.bench}:{content_hash(settings)[:12]}"
    summary = {"bench": args.bench, "model_id": args.model_id, "model_path": args.model_path,
               "baselines": {c: b["model"] for c, b in baselines.items()}, "questions": len(questions),
               **judge.provenance(prompt_version), "judge_calls_this_run": judge.paid, "runs": runs,
               "over_runs": over, "files": [str(run_folder(args, run)) for run in range(args.num_runs)]}
    path = save_summary(summary, summary_path("arena_hard", args.model_path, out_args.result_save_path,
                                              Path(args.bench_dir) / args.model_id))
    if wandb_run:
        log_to_wandb(wandb_run, args.bench, {c: v["mean"] for c, v in over.items()})
    table = [{"category": c, "score (%)": over[c]["mean"], "lower": runs[0]["categories"][c].get("lower"),
              "upper": runs[0]["categories"][c].get("upper"), "std over runs": over[c]["std"], "runs": len(runs)}
             for c in categories]
    print(format_table(table, list(table[0]) if table else ["category"],
                       f"{args.bench}: {args.model_id} vs {', '.join(sorted(set(summary['baselines'].values())))}, "
                       f"judge {judge.name}"))
    print(f"summary: {path}")
    return summary


if __name__ == "__main__":
    main()
