"""lm-evaluation-harness (lm_eval 0.4.13) for a checkpoint or a served model: task sets by name, one task at a time
with the results written as they finish (a rerun skips the tasks already done with the same settings), and the
leaderboards' averages.

Task sets: ``openllm_v1`` (the Open LLM Leaderboard v1: ARC 25-shot, HellaSwag 10, MMLU 5, TruthfulQA mc2 0,
Winogrande 5, GSM8K 5), ``openllm_v2`` (lm_eval's ``leaderboard`` group, scored with the leaderboard's normalisation),
``lion`` (LION's run_lm_eval task list, v1 plus three BBH tasks) and ``chatalign_sample`` (offline sample tasks shipped
in lm_eval_tasks/). ``fast_eval`` keeps LION's fast subset (HellaSwag, ARC, GSM8K, two BBH tasks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# (task, few-shot, the metric the averages use); None shots: the task's own
OPENLLM_V1 = [("arc_challenge", 25, "acc_norm"), ("hellaswag", 10, "acc_norm"), ("mmlu", 5, "acc"),
              ("truthfulqa_mc2", 0, "acc"), ("winogrande", 5, "acc"), ("gsm8k", 5, "exact_match,strict-match")]
LION_EXTRA = [("bbh_cot_fewshot_date_understanding", None, "exact_match,get-answer"),
              ("bbh_cot_fewshot_movie_recommendation", None, "exact_match,get-answer"),
              ("bbh_cot_fewshot_reasoning_about_colored_objects", None, "exact_match,get-answer")]
TASK_SETS = {"openllm_v1": OPENLLM_V1, "openllm_v2": [("leaderboard", None, None)],
             "lion": OPENLLM_V1 + LION_EXTRA,
             "chatalign_sample": [("chatalign_gsm8k_mc_sample", 0, "acc"),
                                  ("chatalign_gsm8k_sample", 5, "exact_match,strict-match")]}
FAST_EVAL = {"hellaswag", "arc_challenge", "gsm8k", "bbh_cot_fewshot_date_understanding",
             "bbh_cot_fewshot_movie_recommendation", "chatalign_gsm8k_mc_sample"}  # LION's use_in_fast_mode, and ours
# The Open LLM Leaderboard v2's normalisation: (value - 1/choices) / (1 - 1/choices), clipped at 0, in percent
BBH_CHOICES = {"boolean_expressions": 2, "causal_judgement": 2, "date_understanding": 6, "disambiguation_qa": 3,
               "formal_fallacies": 2, "geometric_shapes": 11, "hyperbaton": 2, "logical_deduction_five_objects": 5,
               "logical_deduction_seven_objects": 7, "logical_deduction_three_objects": 3,
               "movie_recommendation": 6, "navigate": 2, "object_counting": 19, "penguins_in_a_table": 5,
               "reasoning_about_colored_objects": 18, "ruin_names": 6, "salient_translation_error_detection": 6,
               "snarks": 2, "sports_understanding": 2, "temporal_sequences": 4,
               "tracking_shuffled_objects_five_objects": 5, "tracking_shuffled_objects_seven_objects": 7,
               "tracking_shuffled_objects_three_objects": 3, "web_of_lies": 2}
MUSR_CHOICES = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}


@dataclass
class LMEvalArguments:
    """Keys of scripts/run_lm_eval.py."""

    model_path: str | None = field(default=None, metadata={"help": "Checkpoint folder or hub id to evaluate."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision of the model."})
    model_id: str | None = field(default=None, metadata={"help": "Its name in the results (default: folder name)."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Another tokenizer (default: the "
                                                                              "model's)."})
    tokenizer_revision: str = field(default="main", metadata={"help": "Hub revision of the tokenizer."})
    torch_dtype: str = field(default="auto", metadata={"help": "auto | bfloat16 | float16 | float32",
                                                       "choices": ["auto", "bfloat16", "float16", "float32"]})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the checkpoint's own model code."})
    batch_size: str = field(default="8", metadata={"help": "Batch size, or 'auto'."})
    task_set: str = field(default="openllm_v1", metadata={"help": f"One of {', '.join(TASK_SETS)}.",
                                                          "choices": list(TASK_SETS)})
    tasks: list[str] | None = field(default=None, metadata={"help": "lm_eval task names instead of task_set."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot for --tasks (default: each task's)."})
    fast_eval: bool = field(default=False, metadata={"help": "Only LION's fast subset of the task set."})
    limit: float | None = field(default=None, metadata={"help": "Examples per task (a fraction if < 1)."})
    include_path: list[str] | None = field(default=None, metadata={"help": "Folders of more task YAMLs."})
    apply_chat_template: bool = field(default=False, metadata={"help": "Render prompts with the chat template."})
    log_samples: bool = field(default=True, metadata={"help": "Write each task's samples beside the results."})
    output_path: str | None = field(default=None, metadata={"help": "Default: data/openllm/<model_id>."})
    seed: int = field(default=1234, metadata={"help": "lm_eval's random, numpy, torch and few-shot seeds."})

    def __post_init__(self):
        if not self.model_path:
            raise ValueError("give model_path: the checkpoint (or served model) to evaluate")
        self.model_id = self.model_id or Path(self.model_path.rstrip("/")).name
        self.output_path = self.output_path or str(Path("data") / "openllm" / self.model_id)
        if self.batch_size != "auto" and not self.batch_size.isdigit():
            raise ValueError(f"batch_size must be a number or 'auto', got {self.batch_size!r}")


def planned_tasks(args: LMEvalArguments) -> list[tuple[str, int | None, str | None]]:
    """(task, few-shot, metric) of what to run: --tasks, else the task set, cut to LION's fast subset."""
    tasks = [(t, args.num_fewshot, None) for t in args.tasks] if args.tasks else list(TASK_SETS[args.task_set])
    if args.fast_eval:
        kept = [t for t in tasks if t[0] in FAST_EVAL]
        if not kept:
            raise ValueError(f"fast_eval keeps none of the tasks {[t for t, _, _ in tasks]} "
                             f"(its subset: {', '.join(sorted(FAST_EVAL))})")
        tasks = kept
    return tasks


def task_manager(args: LMEvalArguments):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *(args.include_path or [])])


def check_tasks(manager, tasks) -> None:
    """Every task name is one lm_eval knows, checked before the model loads."""
    known = set(manager.all_tasks)
    unknown = [name for name, _, _ in tasks if name not in known]
    if unknown:
        raise ValueError(f"unknown lm_eval task(s): {', '.join(unknown)} (lm_eval lists {len(known)}; "
                         "add folders of task YAMLs with --include_path)")


def fingerprint(args: LMEvalArguments, task: str, shots: int | None) -> str:
    """What a task's result depends on: a result with another fingerprint is run again, not reused."""
    from chatalign.store import content_hash

    return content_hash({"model": args.model_path, "revision": args.model_revision,
                         "tokenizer": args.tokenizer_name_or_path, "dtype": args.torch_dtype, "task": task,
                         "shots": shots, "limit": args.limit, "chat_template": args.apply_chat_template,
                         "seed": args.seed})[:16]


def normalise(value: float, choices: int | None) -> float:
    """The leaderboard's normalize_within_range: above the random baseline, in percent."""
    lower = 1 / choices if choices else 0.0
    return float(np.clip(value - lower, 0, None) / (1 - lower) * 100)


def leaderboard_v2(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The Open LLM Leaderboard v2's six normalised scores and their average (None where a result is missing)."""
    def get(task, metric):
        return (results.get(task) or {}).get(metric)

    def mean_of(scores):
        return None if not scores or any(s is None for s in scores) else float(np.mean(scores))

    bbh = [None if get(f"leaderboard_bbh_{t}", "acc_norm,none") is None
           else normalise(get(f"leaderboard_bbh_{t}", "acc_norm,none"), n) for t, n in BBH_CHOICES.items()]
    musr = [None if get(f"leaderboard_musr_{t}", "acc_norm,none") is None
            else normalise(get(f"leaderboard_musr_{t}", "acc_norm,none"), n) for t, n in MUSR_CHOICES.items()]
    inst, prompt = (get("leaderboard_ifeval", f"{m},none") for m in ("inst_level_strict_acc", "prompt_level_strict_acc"))
    math = get("leaderboard_math_hard", "exact_match,none")
    gpqa, mmlu_pro = get("leaderboard_gpqa", "acc_norm,none"), get("leaderboard_mmlu_pro", "acc,none")
    scores = {"IFEval": None if inst is None or prompt is None else (inst + prompt) / 2 * 100,
              "BBH": mean_of(bbh), "MATH Lvl 5": None if math is None else normalise(math, None),
              "GPQA": None if gpqa is None else normalise(gpqa, 4), "MuSR": mean_of(musr),
              "MMLU-PRO": None if mmlu_pro is None else normalise(mmlu_pro, 10)}
    scores["average"] = mean_of(list(scores.values()))
    return scores


def performance(results: Mapping[str, Mapping[str, Any]], tasks) -> dict[str, Any]:
    """Each task's metric of interest (percent), the Open LLM Leaderboard v1 average over its six tasks, LION's
    averages, and the v2 scores where the leaderboard group ran; an average is missing unless all its tasks are in."""
    metric_of = {t: m for t, _, m in [*TASK_SETS["lion"], *TASK_SETS["chatalign_sample"]]}
    out: dict[str, Any] = {"tasks": {}, "metrics": {}}
    for task, _, metric in tasks:
        result = results.get(task) or {}
        metric = metric or metric_of.get(task) or _main_metric(result)
        key = f"{metric},none" if metric and "," not in metric else metric
        value = result.get(key) if key else None
        out["tasks"][task] = None if value is None else 100 * value
        out["metrics"][task] = key
    v1 = [out["tasks"].get(t) for t, _, _ in OPENLLM_V1]
    out["openllm_v1_average"] = None if None in v1 else float(np.mean(v1))
    generative = {t for t, m in metric_of.items() if m and "exact_match" in m}
    ran = {t: v for t, v in out["tasks"].items() if v is not None and t in metric_of}
    for name, keep in (("generation_average", lambda t: t in generative),
                       ("classification_average", lambda t: t not in generative)):
        values = [v for t, v in ran.items() if keep(t)]
        out[name] = float(np.mean(values)) if values else None
    if any(t == "leaderboard" for t, _, _ in tasks):
        out["openllm_v2"] = leaderboard_v2(results)
    return out


def build_lm(args: LMEvalArguments, gen_args, stack):
    """The lm_eval model: in process (lm_eval's HFLM over the checkpoint loaded here, with its own tokenizer when
    given), or local-completions against the generation layer's endpoint (base_url, or servers launched for the run
    and stopped by `stack`). Returns (lm, what it is, for the results)."""
    from chatalign.generation.generate import resolve_backend

    tokenizer_path = args.tokenizer_name_or_path or args.model_path
    backend = resolve_backend(gen_args)
    if backend in ("openai", "server"):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        from chatalign.generation.client import endpoint_urls

        if backend == "server":
            from chatalign.generation.servers import serve

            endpoints = stack.enter_context(serve(args.model_path, gen_args))
            urls, model = list(endpoints), endpoints.model
        else:
            urls, model = endpoint_urls(gen_args), gen_args.served_model_name or args.model_path
        lm = LocalCompletionsAPI(model=model, base_url=f"{urls[0]}/completions", tokenizer=tokenizer_path,
                                 tokenizer_backend="huggingface", tokenized_requests=False,
                                 num_concurrent=gen_args.gen_parallel, max_retries=gen_args.max_retries,
                                 revision=args.tokenizer_revision)
        return lm, {"backend": "local-completions", "endpoint": urls[0], "model": model, "tokenizer": tokenizer_path}
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(pretrained=args.model_path, tokenizer=tokenizer_path, revision=args.model_revision,
                  tokenizer_revision=args.tokenizer_revision, dtype=args.torch_dtype,
                  tensor_parallel_size=gen_args.world_size, batch_size=args.batch_size,
                  trust_remote_code=args.trust_remote_code)
        return lm, {"backend": "vllm", "model": args.model_path, "tokenizer": tokenizer_path}
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(args.model_path, revision=args.model_revision, dtype=dtype,
                                                 trust_remote_code=args.trust_remote_code, **kwargs)
    # LION's script replaces tokenizer_name_or_path with the model path; here the tokenizer given is the one used
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=args.tokenizer_revision,
                                              trust_remote_code=args.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=args.batch_size)
    return lm, {"backend": "hf", "model": args.model_path, "tokenizer": tokenizer_path,
                "tokenizer_class": type(tokenizer).__name__}


def run_task(args: LMEvalArguments, lm, manager, task: str, shots: int | None) -> dict[str, Any]:
    """lm_eval.simple_evaluate on one task."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, limit=args.limit, task_manager=manager,
                           log_samples=args.log_samples, apply_chat_template=args.apply_chat_template,
                           random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                           fewshot_random_seed=args.seed)


def _main_metric(result: Mapping[str, Any]) -> str | None:
    """The metric a task without a known one is reported by: acc_norm, acc, exact_match, else its first."""
    for key in ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none"):
        if key in result:
            return key
    return next((k for k, v in result.items() if "," in k and "stderr" not in k and isinstance(v, (int, float))),
                None)


def write_json(path: Path, document: Any) -> None:
    from chatalign.store import write_text

    write_text(path, json.dumps(document, indent=2, ensure_ascii=False, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, set):
        return sorted(value)
    return str(value)


def read_results(path: Path) -> dict[str, Any]:
    """The results file of earlier runs ({results, configs, n-shot, fingerprints, ...}), or an empty one."""
    if not path.is_file():
        return {"results": {}, "configs": {}, "n-shot": {}, "versions": {}, "fingerprints": {}}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg}); move it away to start over") from None
    document.setdefault("fingerprints", {})
    return document


def merge_results(done: dict[str, Any], result: Mapping[str, Any], task: str, print_: str,
                  model_info: Mapping[str, Any]) -> dict[str, Any]:
    """`done` with one task's simple_evaluate output folded in (its subtasks too), marked with its fingerprint."""
    import lm_eval

    for key in ("results", "configs", "n-shot", "versions", "higher_is_better", "n-samples", "groups"):
        if isinstance(result.get(key), Mapping):
            done.setdefault(key, {}).update(result[key])
    done["fingerprints"][task] = print_
    done["model"] = dict(model_info)
    done["lm_eval_version"] = getattr(lm_eval, "__version__", None)
    return done
