"""MT-Bench (FastChat's 80 two-turn questions) for a model, with any judge; resumable, in FastChat's layout.

    python scripts/run_mt_bench.py --model_path outputs/smollm2-135m-dpo-full --judge_model gpt-4
    python scripts/run_mt_bench.py --model_path M --judge_model Qwen/Qwen2.5-7B-Instruct \
        --judge_base_url http://127.0.0.1:8000/v1 --num_runs 3
    python scripts/run_mt_bench.py --model_path M --judge_model path/to/judge-checkpoint   # served for the run
    python scripts/run_mt_bench.py --model_path M --mode pairwise-baseline --baseline_model gpt-3.5-turbo

Answers come from the generation layer (--backend, --base_url, --gen_parallel, --gen_chat_template, ...) at FastChat's
per-category temperatures; judgments from FastChat's single-answer judge prompts through chatalign's client, each
cached (<bench_dir>/.work/judgments.jsonl) as it arrives, so a rerun makes only the missing calls. Before calls to a
paid endpoint the number of calls, tokens and estimated cost are printed and confirmed (--y skips the question).
Files: <bench_dir>/model_answer/<model_id>.jsonl and model_judgment/<judge>_single.jsonl (or _pair.jsonl), which
FastChat's show_result.py reads; with --num_runs K, run<k>/ folders. The summary (scores per run, their mean,
standard deviation and median, the judge's provenance) goes to <model_path>/eval_results/mt_bench.json or
--result_save_path; --to_wandb adds the scores to the wandb run that trained the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chatalign.configs import ChatalignParser
from chatalign.eval.judge import EvalJudgeArguments
from chatalign.eval.mt_bench_run import MTBenchArguments
from chatalign.eval.results import EvalOutputArguments
from chatalign.generation.params import GenerationArguments

logger = logging.getLogger("run_mt_bench")


def make_parser() -> ChatalignParser:
    return ChatalignParser([MTBenchArguments, EvalJudgeArguments, GenerationArguments, EvalOutputArguments])


def main(argv=None, confirm=input):
    args, judge_args, gen_args, out_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.eval import mt_bench
    from chatalign.eval.judge import EvalJudge, with_default_judge
    from chatalign.eval.mt_bench_run import (
        baseline_answers,
        generate_answers,
        judge_answers,
        judge_pairs,
        run_folder,
        select_questions,
    )
    from chatalign.eval.reporting import format_table, run_statistics
    from chatalign.eval.results import log_to_wandb, save_summary, summary_path, wandb_run_of
    from chatalign.store import content_hash

    # 1. Questions, judge prompts and reference answers, checked before anything is generated or paid for
    if args.mode != "single" and judge_args.judge_scoring == "logprobs":
        raise ValueError("judge_scoring=logprobs weighs 1-10 ratings: it needs mode=single")
    questions = mt_bench.load_questions(args.question_file or mt_bench.MT_BENCH_DIR / "question.jsonl")
    questions = select_questions(args, questions)
    prompt_file = Path(args.judge_prompt_file or mt_bench.MT_BENCH_DIR / "judge_prompts.jsonl")
    prompts = mt_bench.load_judge_prompts(prompt_file)
    reference_file = Path(args.reference_answer_file or mt_bench.MT_BENCH_DIR / "reference_answer" / "gpt-4.jsonl")
    (references,) = mt_bench.load_answers(reference_file).values()
    for question in questions:
        if question["category"] in mt_bench.NEED_REF_CATS and question["question_id"] not in references:
            raise ValueError(f"{reference_file}: no reference answer to question {question['question_id']} "
                             f"({question['category']}), which is judged against one")
    baseline = baseline_answers(args, questions) if args.mode == "pairwise-baseline" else None
    wandb_run = wandb_run_of(args.model_path) if out_args.to_wandb else None
    judge_args = with_default_judge(judge_args, "gpt-4", 2048)  # FastChat's judge and max_tokens
    judge = EvalJudge(judge_args, Path(args.bench_dir) / ".work" / "judgments.jsonl", gen_args, confirm=confirm)

    # 2. Per run: answers (generated, or read with --judge_only), then judgments, then FastChat's scores
    runs = []
    for run in range(args.num_runs):
        answer_file = run_folder(args, run) / "model_answer" / f"{args.model_id}.jsonl"
        if args.judge_only:
            if not answer_file.is_file():
                raise FileNotFoundError(f"--judge_only: no answers at {answer_file}")
            answers = mt_bench.load_answers(answer_file)[args.model_id]
        else:
            answers = generate_answers(args, questions, gen_args, run)
        mt_bench.check_answers(questions, {args.model_id: answers}, str(answer_file))
        if baseline is not None:
            rows = judge_pairs(args, questions, answers, baseline, judge, prompts, references, run)
            runs.append(mt_bench.pair_results(rows, args.baseline_model).get(args.model_id, {}))
            continue
        rows = judge_answers(args, questions, answers, judge, prompts, references, run)
        runs.append(mt_bench.single_scores(rows, questions)[args.model_id])
        runs[-1]["lion_overall"] = mt_bench.overall_of_categories(runs[-1]["categories"])

    # 3. The summary, with the judge's provenance
    prompt_version = f"fastchat-0.2.36:{content_hash(prompt_file.read_text())[:12]}"
    keys = ("win_rate", "loss_rate", "win_rate_adjusted") if baseline else ("turn_1", "turn_2", "average",
                                                                          "lion_overall")
    summary = {"bench": "mt_bench", "mode": args.mode, "model_id": args.model_id, "model_path": args.model_path,
               **({"baseline_model": args.baseline_model} if baseline else {}),
               "questions": len(questions), **judge.provenance(prompt_version),
               "judge_calls_this_run": judge.paid, "runs": runs,
               "over_runs": {key: run_statistics([r.get(key) for r in runs]) for key in keys},
               "files": [str(run_folder(args, run)) for run in range(args.num_runs)]}
    if not baseline:
        summary["categories_over_runs"] = {category: run_statistics([r["categories"][category] for r in runs])
                                           for category in runs[0]["categories"]}
    path = save_summary(summary, summary_path("mt_bench", args.model_path, out_args.result_save_path,
                                              Path(args.bench_dir) / args.model_id))
    over = summary["over_runs"]
    if wandb_run:
        log_to_wandb(wandb_run, "mt_bench" if not baseline else f"mt_bench_vs_{args.baseline_model}",
                     {key: value["mean"] for key, value in over.items()}
                     | {f"category/{c}": v["mean"] for c, v in summary.get("categories_over_runs", {}).items()})
    if baseline:
        row = {"model": args.model_id, **{key: over[key]["mean"] for key in keys}, "runs": len(runs)}
        print(format_table([row], list(row), f"MT-Bench pairwise vs {args.baseline_model}, judge {judge.name}"))
    else:
        print(format_table([{"model": args.model_id, "turn 1": over["turn_1"]["mean"],
                             "turn 2": over["turn_2"]["mean"], "average (FastChat)": over["average"]["mean"],
                             "std": over["average"]["std"], "overall (LION)": over["lion_overall"]["mean"],
                             "runs": len(runs)}],
                           ["model", "turn 1", "turn 2", "average (FastChat)", "std", "overall (LION)", "runs"],
                           f"MT-Bench, judge {judge.name}"))
    print(f"summary: {path}")
    return summary


if __name__ == "__main__":
    main()
