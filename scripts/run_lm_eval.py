"""lm-evaluation-harness on a checkpoint or a served model: task sets by name, resumable, the leaderboards' averages.

    python scripts/run_lm_eval.py --model_path outputs/smollm2-135m-dpo-full                 # Open LLM Leaderboard v1
    python scripts/run_lm_eval.py --model_path M --task_set openllm_v2 --batch_size auto     # v2, normalised
    python scripts/run_lm_eval.py --model_path M --task_set lion --fast_eval true --to_wandb true
    python scripts/run_lm_eval.py --model_path M --tasks gsm8k --num_fewshot 5 --backend openai \
        --base_url http://127.0.0.1:8000/v1                                                   # a running server
    python scripts/run_lm_eval.py --model_path M --task_set chatalign_sample --limit 16      # offline sample tasks

In process the model runs as lm_eval's HFLM (--torch_dtype, --attn_implementation, --batch_size, with
--tokenizer_name_or_path/--tokenizer_revision honoured); --backend openai/server sends the requests as lm_eval's
local-completions to the generation layer's endpoint (--base_url, or servers it launches: vLLM, SGLang,
transformers serve). Tasks run one at a time; <output_path>/results.json (default data/openllm/<model_id>) is
rewritten after each, so a rerun skips the tasks already done with the same settings. performance.json holds each
task's metric and the averages (v1: the mean of its six tasks; v2: the leaderboard's normalised scores). The
summary also goes to <model_path>/eval_results/lm_eval.json; --to_wandb logs it to the training run.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from chatalign.configs import ChatalignParser
from chatalign.eval.harness import LMEvalArguments
from chatalign.eval.results import EvalOutputArguments
from chatalign.generation.params import GenerationArguments

logger = logging.getLogger("run_lm_eval")


def make_parser() -> ChatalignParser:
    return ChatalignParser([LMEvalArguments, GenerationArguments, EvalOutputArguments])


def main(argv=None):
    args, gen_args, out_args = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.eval import harness
    from chatalign.eval.reporting import format_table
    from chatalign.eval.results import log_to_wandb, save_summary, summary_path, wandb_run_of

    # 1. The tasks, checked by name before the model loads; what earlier runs already finished
    tasks = harness.planned_tasks(args)
    manager = harness.task_manager(args)
    harness.check_tasks(manager, tasks)
    wandb_run = wandb_run_of(args.model_path) if out_args.to_wandb else None
    output = Path(args.output_path)
    results_file = output / "results.json"
    done = harness.read_results(results_file)

    # 2. One task at a time, the results written after each
    todo = [(t, s, m) for t, s, m in tasks if done["fingerprints"].get(t) != harness.fingerprint(args, t, s)]
    logger.info("%d of %d tasks already in %s", len(tasks) - len(todo), len(tasks), results_file)
    with contextlib.ExitStack() as stack:
        lm, model_info = harness.build_lm(args, gen_args, stack) if todo else (None, done.get("model"))
        for task, shots, _ in todo:
            logger.info("lm_eval: %s (%s-shot)", task, "default" if shots is None else shots)
            result = harness.run_task(args, lm, manager, task, shots)
            done = harness.merge_results(done, result, task, harness.fingerprint(args, task, shots), model_info)
            harness.write_json(results_file, done)
            if args.log_samples:
                for name, samples in (result.get("samples") or {}).items():
                    harness.write_json(output / f"samples_{name}.json", samples)

    # 3. The averages, the summary, wandb
    perf = harness.performance(done["results"], tasks)
    harness.write_json(output / "performance.json", perf)
    summary = {"bench": "lm_eval", "model_id": args.model_id, "model_path": args.model_path,
               "task_set": None if args.tasks else args.task_set, "fast_eval": args.fast_eval, "limit": args.limit,
               "model": done.get("model"), "lm_eval_version": done.get("lm_eval_version"), **perf,
               "files": [str(results_file), str(output / "performance.json")]}
    path = save_summary(summary, summary_path("lm_eval", args.model_path, out_args.result_save_path, output))
    if wandb_run:
        flat = {f"task/{t}": v for t, v in perf["tasks"].items()}
        flat |= {k: v for k, v in perf.items() if k.endswith("average")}
        flat |= {f"openllm_v2/{k}": v for k, v in (perf.get("openllm_v2") or {}).items()}
        log_to_wandb(wandb_run, "lm_eval", flat)
    rows = [{"task": t, "score (%)": v} for t, v in perf["tasks"].items()]
    rows += [{"task": k, "score (%)": v} for k, v in perf.items() if k.endswith("average")]
    rows += [{"task": f"v2 {k}", "score (%)": v} for k, v in (perf.get("openllm_v2") or {}).items()]
    print(format_table(rows, ["task", "score (%)"], f"lm-eval-harness: {args.model_id}"))
    print(f"results: {results_file}\nsummary: {path}")
    return summary


if __name__ == "__main__":
    main()
