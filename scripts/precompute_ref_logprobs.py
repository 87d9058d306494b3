"""Compute the DPO reference log-probs once, so run_dpo trains with no reference model in memory.

    python scripts/precompute_ref_logprobs.py recipe.yaml --precompute_file_path=ref_logps.parquet \
        --precompute_ref_batch_size=64
    python scripts/run_dpo.py recipe.yaml --precompute_file_path=ref_logps.parquet
    # no file named: the dependency-keyed cache that run_dpo with precompute_ref_log_probs reads, on every rank
    python scripts/precompute_ref_logprobs.py recipe.yaml
    accelerate launch ... scripts/run_dpo.py recipe.yaml --precompute_ref_log_probs=true

Takes the same recipe as run_dpo and sees the same rows (mixture, max_data_size / preference_config selection with
the same seed, and the test split when evaluation is on). The reference model (`ref_model_name_or_path`, else
`model_name_or_path`) runs without gradients in batches of `precompute_ref_batch_size`, through TRL's own
reference pass (a DPOTrainer built on it with precompute_ref_log_probs=True), so the numbers are those online-reference
training computes.

Output: one parquet file with one row per unique pair: key (sha256 of the canonical JSON of prompt, chosen and
rejected), ref_chosen_logps, ref_rejected_logps (float32, TRL's sums over completion tokens) and dropped (TRL drops
the pair because its prompt alone fills max_length). The file's schema metadata (key "chatalign") holds the format
version and the dependencies the numbers were computed with: reference model path, config.json hash, weight-files
hash, dtype, mixed precision, quantization, tokenizer hash, chat template hash, max_length, truncation_mode, ld_alpha.

Running it again is cheap: when the file exists and its dependencies match, only pairs it lacks are computed (none:
nothing is loaded), and the file is rewritten after every chunk of pairs, so an interrupted run resumes. A file
computed with other dependencies is an error naming the first difference; delete it or pick another path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chatalign.configs import ChatalignParser, ConfigError
from chatalign.data.arguments import DataArguments
from chatalign.train.dpo.arguments import DPOScriptArguments
from chatalign.train.models import ModelArguments

logger = logging.getLogger("precompute_ref_logprobs")


def make_parser() -> ChatalignParser:
    from trl import DPOConfig

    return ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments])


def main(argv=None):
    parser = make_parser()
    model_args, data_args, training_args, script_args = parser.parse(argv)

    from chatalign.train.dpo.arguments import check_dpo_run
    from chatalign.train.dpo.reference import ensure_ref_logps, ref_cache_path, reference_dependencies
    from chatalign.train.dpo.selection import load_preference_data
    from chatalign.train.models import load_model, load_training_tokenizer, reference_revision
    from chatalign.train.run import setup_logging

    # 1. Checks that need no data or model
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ConfigError("precompute_ref_logprobs runs the reference through TRL's trainer, which refuses a quantized "
                          "model without an adapter; a QLoRA run keeps its reference online")
    check_dpo_run(model_args, data_args, training_args, script_args)
    setup_logging(training_args)

    # 2. Tokenizer, the rows run_dpo will train and evaluate on, and what the log-probs depend on
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    with training_args.main_process_first(desc="dataset preparation"):
        train_dataset, eval_dataset, data_counts = load_preference_data(data_args, training_args, script_args,
                                                                        tokenizer)
    dependencies = reference_dependencies(model_args, training_args, script_args, tokenizer)
    splits = [d for d in (train_dataset, eval_dataset) if d is not None]
    # No file named: the cache run_dpo reads with precompute_ref_log_probs, in one process or several.
    path = Path(script_args.precompute_file_path or ref_cache_path(dependencies, script_args.ref_logps_cache_dir))

    # 3. TRL's reference pass over the pairs the file lacks (the reference model loads only if some pair is missing),
    # saved chunk by chunk
    ref_path = script_args.ref_model_name_or_path or model_args.model_name_or_path
    revision = reference_revision(model_args, script_args.ref_model_name_or_path, script_args.ref_model_revision)
    data, computed = ensure_ref_logps(path, dependencies, splits, tokenizer, training_args,
                                      lambda: load_model(model_args, training_args, tokenizer, ref_path, revision))
    logger.info("%s: %d pairs (%d computed now, %d dropped by max_length=%s); data %s", path, len(data), computed,
                len(data.dropped), training_args.max_length, data_counts)
    return data

if __name__ == "__main__":
    main()
