"""AlpacaEval 2.0 for a model: its outputs, alpaca_eval's annotator with any judge, alpaca_eval's metrics.

    python scripts/run_alpaca_eval.py --model_path outputs/smollm2-135m-dpo-full            # judge gpt-4-1106-preview
    python scripts/run_alpaca_eval.py --model_path M --eval_set_path alpaca_eval_gpt4_baseline.json \
        --judge_model Qwen/Qwen2.5-72B-Instruct --judge_base_url http://127.0.0.1:8000/v1 --num_runs 3
    python scripts/run_alpaca_eval.py --model_path M --judge_only true --lc_data_path df_gamed.csv

Outputs come from the generation layer (--backend, --base_url, --gen_parallel, --gen_chat_template, ...) and are
written as alpaca_eval's model_outputs.json; annotations use alpaca_eval's annotator config (default
weighted_alpaca_eval_gpt4_turbo: its prompt, order randomisation and logprob-weighted preference), each judge call
cached (<output_dir>/.work/judgments.jsonl) and, for a paid endpoint, estimated and confirmed first (--y). Metrics are
alpaca_eval's get_winrate and length-controlled GLM; the LC win rate needs df_gamed.csv (--lc_data_path, or a copy
cached after a first download) and is reported missing where it cannot be computed. The summary goes to
<model_path>/eval_results/alpaca_eval.json or --result_save_path; --to_wandb logs it to the training run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from chatalign.configs import ChatalignParser
from chatalign.eval.alpaca_run import AlpacaEvalArguments
from chatalign.eval.judge import EvalJudgeArguments
from chatalign.eval.results import EvalOutputArguments
from chatalign.generation.params import GenerationArguments

logger = logging.getLogger("run_alpaca_eval")
SCORES = ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "avg_length")


def make_parser() -> ChatalignParser:
    return ChatalignParser([AlpacaEvalArguments, EvalJudgeArguments, GenerationArguments, EvalOutputArguments])


def main(argv=None, confirm=input):
    args, judge_args, gen_args, out_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.eval import alpaca
    from chatalign.eval.alpaca_run import generate_outputs, run_folder
    from chatalign.eval.judge import EvalJudge, with_default_judge
    from chatalign.eval.reporting import format_table, run_statistics
    from chatalign.eval.results import log_to_wandb, save_summary, summary_path, wandb_run_of
    from chatalign.store import content_hash

    # 1. The annotator, the eval set and the reference outputs, checked before anything is generated or paid for
    config, config_path = alpaca.annotator_config(args.annotators_config)
    if args.reference_model_path:  # another checkpoint's outputs, generated below, are the baseline
        eval_set, eval_source = (alpaca.load_outputs(args.eval_set_path, need_output=False), args.eval_set_path) \
            if args.eval_set_path else alpaca.load_eval_set(None)
        reference = None
    elif args.reference_outputs:  # another baseline: the instructions are the eval set's, or the reference's own
        reference = alpaca.load_outputs(args.reference_outputs)
        eval_set = alpaca.load_outputs(args.eval_set_path, need_output=False) if args.eval_set_path else reference
        eval_source = args.eval_set_path or args.reference_outputs
    else:
        eval_set, eval_source = alpaca.load_eval_set(args.eval_set_path)
        reference = eval_set
    if args.first_n:
        eval_set = eval_set[:args.first_n]
        reference = reference[:args.first_n] if reference else None
    if reference is not None:
        alpaca.check_same_instructions(eval_set, reference, args.reference_outputs or eval_source)
    wandb_run = wandb_run_of(args.model_path) if out_args.to_wandb else None
    kwargs = config["completions_kwargs"]  # the config's judge and max_tokens
    judge_args = with_default_judge(judge_args, kwargs["model_name"], int(kwargs.get("max_tokens", 2048)))
    judge = EvalJudge(judge_args, Path(args.output_dir) / ".work" / "judgments.jsonl", gen_args, confirm=confirm)

    # 2. The reference checkpoint's outputs where it is one; per run: outputs (generated, or read with
    #    --judge_only), annotations, alpaca_eval's metrics
    if reference is None:
        reference_args = replace(args, model_path=args.reference_model_path, model_id=None, num_runs=1,
                                 reference_model_path=None, judge_only=False)
        if reference_args.model_id == args.model_id:
            raise ValueError(f"the model and the reference checkpoint are both named {args.model_id!r}; give --model_id")
        reference = generate_outputs(reference_args, eval_set, gen_args, 0)
    runs = []
    for run in range(args.num_runs):
        output_file = run_folder(args, run) / "model_outputs.json"
        if args.judge_only:
            outputs = alpaca.load_outputs(output_file)
        else:
            outputs = generate_outputs(args, eval_set, gen_args, run)
        outputs = [{**row, "generator": args.model_id} for row in outputs]
        alpaca.check_same_instructions(outputs, reference, str(output_file))
        annotations = alpaca.annotate(outputs, reference, args.annotators_config, judge,
                                      run_folder(args, run) / Path(args.annotators_config).name)
        runs.append(alpaca.metrics(annotations, outputs, args.lc_data_path))
        if runs[-1].get("lc_unavailable"):
            logger.warning("length-controlled win rate unavailable: %s", runs[-1]["lc_unavailable"])

    # 3. The summary, with the judge's provenance
    baseline = reference[0].get("generator", "reference")
    prompt_version = f"alpaca_eval-{alpaca.import_alpaca_eval().__version__}:{config_path.parent.name}:" \
                     f"{content_hash(config)[:12]}"
    summary = {"bench": "alpaca_eval", "model_id": args.model_id, "model_path": args.model_path,
               "baseline": baseline, "eval_set": eval_source, "instructions": len(eval_set),
               "annotator": args.annotators_config, **judge.provenance(prompt_version),
               "scoring": f"alpaca_eval {config.get('fn_completion_parser', 'regex_parser')}",
               "judge_calls_this_run": judge.paid, "runs": runs,
               "over_runs": {key: run_statistics([r.get(key) for r in runs]) for key in SCORES},
               "files": [str(run_folder(args, run)) for run in range(args.num_runs)]}
    path = save_summary(summary, summary_path("alpaca_eval", args.model_path, out_args.result_save_path,
                                              Path(args.output_dir) / args.model_id))
    over = summary["over_runs"]
    if wandb_run:
        log_to_wandb(wandb_run, "alpaca_eval", {key: value["mean"] for key, value in over.items()})
    row = {"model": args.model_id, "win rate": over["win_rate"]["mean"], "std err": over["standard_error"]["mean"],
           "LC win rate": over["length_controlled_winrate"]["mean"], "avg length": over["avg_length"]["mean"],
           "std over runs": over["win_rate"]["std"], "runs": len(runs)}
    print(format_table([row], list(row), f"AlpacaEval 2.0 vs {baseline}, annotator {args.annotators_config}, "
                                         f"judge {judge.name}"))
    print(f"summary: {path}")
    return summary


if __name__ == "__main__":
    main()
