"""LION's "partial" importance weights: log mu(y|x) of every chosen and rejected response under candidate generators.

    python scripts/compute_importance_weight.py recipes/zephyr-7b-beta/analysis/config_importance_weight.yaml \
        --model_name_or_path=WizardLM/WizardLM-7B-V1.0 --chat_template=vicuna_v1.1 \
        --output_dir=data/analysis/WizardLM-7B-V1.0_weights --dtype=bfloat16 --per_device_train_batch_size=4
    # a 70B candidate on one GPU: int8 weights, what does not fit kept in fp32 on the CPU
    python scripts/compute_importance_weight.py recipe.yaml --model_name_or_path=WizardLM/WizardLM-70B-V1.0 \
        --load_in_8bit=true --llm_int8_enable_fp32_cpu_offload=true --per_device_train_batch_size=1 --output_dir=...
    python scripts/run_dpo.py recipe.yaml --wis_importance_file=data/analysis/.../importance_weights.jsonl

The recipe is a run_dpo recipe (same data keys, max_length, selection), so the pairs are those the DPO run trains on.
One candidate is model_name_or_path with chat_template; several are a `candidate_models` list, each with its own
prompt format:

    candidate_models:
      - {name: wizardlm-7b, model_name_or_path: WizardLM/WizardLM-7B-V1.0, chat_template: vicuna_v1.1}
      - {name: zephyr-sft, model_name_or_path: alignment-handbook/zephyr-7b-sft-full}

Each candidate's log-probs (TRL's summed response log-probs, as DPO's reference pass computes them, rendered with
that candidate's template) are cached in <output_dir>/.work/<name>.parquet, so a rerun computes only what is missing.
Output: <output_dir>/importance_weights.jsonl, one row per pair keyed by pair_id: chosen_logps / rejected_logps (log of
the candidates' uniform mixture; with one candidate its own log-probs) and logps/<name>/chosen, logps/<name>/rejected.
8/4-bit loading needs a CUDA GPU (bitsandbytes); elsewhere it is an error before any weights are read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatalign.configs import ChatalignParser
from chatalign.data.arguments import DataArguments
from chatalign.train.dpo.arguments import DPOScriptArguments
from chatalign.train.models import ModelArguments

logger = logging.getLogger("compute_importance_weight")


@dataclass
class ImportanceArguments:
    candidate_models: list[dict[str, Any]] | None = field(
        default=None,
        metadata={"help": "Candidate generators: [{name, model_name_or_path, chat_template, revision, "
                          "tokenizer_name_or_path}]; default: model_name_or_path with chat_template."},
    )
    llm_int8_enable_fp32_cpu_offload: bool = field(
        default=False,
        metadata={"help": "With load_in_8bit: place what does not fit on the GPU on the CPU in fp32 "
                          "(device_map=auto)."},
    )


def make_parser() -> ChatalignParser:
    from trl import DPOConfig

    return ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments, ImportanceArguments])


def main(argv=None):
    model_args, data_args, training_args, script_args, importance_args = make_parser().parse(argv)

    from chatalign.analysis.importance import importance_rows, parse_candidates
    from chatalign.analysis.sequence_logps import LogpsModel, dependencies_of, logps_of_rows, pair_logps
    from chatalign.store import write_jsonl, write_text
    from chatalign.train.dpo.arguments import check_dpo_arguments, check_input_files
    from chatalign.train.dpo.importance import IMPORTANCE_FILE
    from chatalign.train.dpo.reference import pair_keys
    from chatalign.train.dpo.selection import load_preference_data
    from chatalign.train.models import check_quantization_request, load_training_tokenizer
    from chatalign.train.run import check_recipe, setup_logging

    # 1. Checks that need no data or model. The file this script writes is what wis reads, not an input here.
    script_args.wis_importance_file = None
    candidates = parse_candidates(importance_args.candidate_models, model_args.model_name_or_path,
                                  data_args.chat_template)
    check_dpo_arguments(training_args, data_args, script_args)
    check_input_files(script_args)
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    if importance_args.llm_int8_enable_fp32_cpu_offload and not model_args.load_in_8bit:
        raise ValueError("llm_int8_enable_fp32_cpu_offload needs load_in_8bit=true (bitsandbytes' int8 offload)")
    for spec in candidates:
        check_recipe(dataclasses.replace(model_args, model_name_or_path=spec["model_name_or_path"]), data_args)
    setup_logging(training_args)
    out = Path(training_args.output_dir)

    # 2. Every candidate's tokenizer (its template renders the rows), then the rows of the DPO run
    specs = []
    for spec in candidates:
        candidate_args = dataclasses.replace(model_args, model_name_or_path=spec["model_name_or_path"],
                                             model_revision=spec["revision"] or model_args.model_revision,
                                             tokenizer_name_or_path=spec["tokenizer_name_or_path"])
        tokenizer = load_training_tokenizer(candidate_args, spec["chat_template"], training_args.trust_remote_code)
        model = LogpsModel(spec["name"], spec["model_name_or_path"], candidate_args.model_revision, tokenizer)
        specs.append((model, candidate_args, dependencies_of(model, candidate_args, training_args)))
    train, evaluation, data_counts = load_preference_data(data_args, training_args, script_args, specs[0][0].tokenizer)
    splits = [s for s in (train, evaluation) if s is not None]
    rows = [row for split in splits for row in split]
    keys = [key for split in splits for key in pair_keys(split)]

    # 3. Log-probs per candidate, each cached and resumable
    per_candidate = {}
    for spec, candidate_args, dependencies in specs:
        data = pair_logps(spec, splits, out / ".work" / f"{spec.label}.parquet", candidate_args, training_args,
                          dependencies, cpu_offload=importance_args.llm_int8_enable_fp32_cpu_offload)
        per_candidate[spec.label] = logps_of_rows(data, keys)

    # 4. One merged file keyed by pair id (pairs dropped by max_length marked, so wis excludes them by name)
    merged, dropped = importance_rows(rows, keys, per_candidate)
    write_jsonl(out / IMPORTANCE_FILE, merged)
    summary = {"pairs": len(merged) - dropped, "dropped: prompt fills max_length under some candidate": dropped,
               "candidates": candidates, "mixture": "uniform: log((1/K) sum_k mu_k(y|x))", "data": data_counts}
    write_text(out / "importance_summary.json", json.dumps(summary, indent=2))
    print(f"log mu(y|x) of {len(merged) - dropped} pairs under {len(candidates)} candidate(s) "
          f"({', '.join(c['name'] for c in candidates)}); {dropped} dropped by max_length -> {out / IMPORTANCE_FILE}")
    return summary


if __name__ == "__main__":
    main()
