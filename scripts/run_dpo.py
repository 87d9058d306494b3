"""Direct Preference Optimization of a chat model with TRL's DPOTrainer: full, LoRA or QLoRA, any TRL DPO loss.

    python scripts/run_dpo.py recipes/zephyr-7b-beta/dpo/config_full.yaml
    python scripts/run_dpo.py recipe.yaml --loss_type ipo --beta 0.01 --max_data_size 20000

Preference rows (prompt messages, one chosen and one rejected assistant message) are templated by TRL; the loss is
any of TRL's `loss_type`s (a list combines several, weighted by `loss_weights`), and rewards/chosen, rewards/rejected,
rewards/margins and rewards/accuracies are logged with the loss. The reference is `ref_model_name_or_path`, else the
model itself loaded a second time; with PEFT it is the model with its adapter disabled (nothing extra is loaded).

Variants (recipe keys, see chatalign.train.dpo):
  max_data_size         a subset of this many pairs, drawn with the training seed (a baseline for the next one)
  preference_config     {score difference: weight}, -100 the weight of every difference not listed. By default
                        (preference_sampling: quota) LION's rule: bins 0..9 of floor(score_chosen - score_rejected),
                        each with int((max_data_size // sum of the 10 weights) * weight) pairs, all of a smaller bin;
                        negative differences are excluded. preference_sampling: weighted samples pairs with
                        probability proportional to their bucket's weight instead. Counts per bin are logged and saved.
  rm_weight_column      a column whose value multiplies its pair's loss (every loss type but aot, aot_unpaired, sft)
  rm_importance_file    LION's rm_importance selection from scripts/compute_lm_reward.py's lm_rewards.jsonl: pairs
                        with weight >= rm_importance_min_weight (0.1), max_data_size of them drawn towards a bimodal
                        weight distribution (all of them when max_data_size is unset)
  wis_importance_file   LION's wis loss weight from scripts/compute_importance_weight.py's importance_weights.jsonl:
                        sigmoid(wis_gamma * (log pi/mu of y_w + log pi/mu of y_l)) + 1e-6 per pair, detached
  precompute_file_path  reference log-probs from scripts/precompute_ref_logprobs.py: no reference model is loaded; a
                        file that does not match this run (rows, model, tokenizer, template, max_length) is an error
  precompute_ref_log_probs  with no file named: the reference log-probs are cached under ref_logps_cache_dir
                        ($CHATALIGN_CACHE, ~/.cache/chatalign) keyed by a hash of what they depend on; a later run
                        with the same reference reuses them (and says so) and computes only the pairs it lacks; a
                        multi-process run reads a cache holding every pair, else runs TRL's sharded in-run pass
"""

from __future__ import annotations

import copy
import logging

from chatalign.configs import ChatalignParser, write_run_args
from chatalign.data.arguments import DataArguments
from chatalign.train.dpo.arguments import DPOScriptArguments
from chatalign.train.models import ModelArguments
from chatalign.train.run import keep_secrets_out_of_files

logger = logging.getLogger("run_dpo")


def make_parser() -> ChatalignParser:
    from trl import DPOConfig

    return ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments])


def main(argv=None):
    parser = make_parser()
    model_args, data_args, training_args, script_args = parser.parse(argv)
    # A snapshot: what run_args.yaml records is the recipe as given, not the values adjusted below for TRL.
    configs = copy.deepcopy((model_args, data_args, training_args, script_args))
    keep_secrets_out_of_files(training_args)  # never pickled into training_args.bin

    from chatalign.train.dpo.arguments import check_dpo_run, ref_cache_mode, reference_model_path
    from chatalign.train.dpo.reference import (
        attach_ref_logps,
        complete_ref_cache,
        ensure_ref_logps,
        open_ref_logps_file,
        ref_cache_path,
        reference_dependencies,
    )
    from chatalign.train.dpo.selection import load_preference_data
    from chatalign.train.dpo.trainer import ChatalignDPOTrainer
    from chatalign.train.models import (
        check_quantization_request,
        load_model,
        load_reference_model,
        load_training_tokenizer,
        peft_config,
        reference_revision,
    )
    from chatalign.train.run import (
        RecordRunArgsCallback,
        resolve_resume_checkpoint,
        setup_logging,
        train_save_evaluate,
        with_prompt_ids,
    )

    # 1. Logging, checks that need no data or model, and the resolved config
    check_dpo_run(model_args, data_args, training_args, script_args)
    setup_logging(training_args)
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    checkpoint = resolve_resume_checkpoint(training_args, configs, script_args.overwrite_output_dir)
    if training_args.process_index == 0:
        write_run_args(training_args.output_dir, configs)

    # 2. Tokenizer and data: mixed, validated, selected, weighted; precomputed reference log-probs are matched to
    # the rows here, so a stale file fails before any model is loaded.
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    ref_name = script_args.ref_model_name_or_path or model_args.model_name_or_path
    ref_revision = reference_revision(model_args, script_args.ref_model_name_or_path, script_args.ref_model_revision)
    with training_args.main_process_first(desc="dataset preparation"):
        train_dataset, eval_dataset, data_counts = load_preference_data(data_args, training_args, script_args,
                                                                        tokenizer)
        train_dataset = with_prompt_ids(train_dataset, "preference")  # for train_data_ids.csv
        dependencies = reference_dependencies(model_args, training_args, script_args, tokenizer)
        splits = [d for d in (train_dataset, eval_dataset) if d is not None]
        cache_mode = ref_cache_mode(model_args, training_args, script_args)
        if cache_mode == "read":  # several processes: a complete cache, else TRL's pass sharded over the ranks
            cached = complete_ref_cache(dependencies, splits, script_args.ref_logps_cache_dir)
            if cached is not None:
                script_args.precompute_file_path = str(cached)
            else:
                logger.info("no reference log-probs cache holds all %d pairs: TRL's in-run pass over %d processes "
                            "(precompute_ref_logprobs.py with this recipe writes the cache for later runs)",
                            sum(len(d) for d in splits), training_args.world_size)
        if cache_mode == "compute":
            # No file named: the reference log-probs live in a cache keyed by their dependencies, found by every
            # later run with the same reference; only pairs it lacks are computed (the reference loads only then).
            script_args.precompute_file_path = str(ref_cache_path(dependencies, script_args.ref_logps_cache_dir))
            _, computed = ensure_ref_logps(script_args.precompute_file_path, dependencies, splits, tokenizer,
                                           training_args, lambda: load_model(
                                               model_args, training_args, tokenizer, ref_name, ref_revision))
            logger.info("reference log-probs cache %s: %d pairs computed now, %d reused",
                        script_args.precompute_file_path, computed, sum(len(d) for d in splits) - computed)
        if script_args.precompute_file_path:
            path = script_args.precompute_file_path
            ref_logps = open_ref_logps_file(path, dependencies)
            train_dataset = attach_ref_logps(train_dataset, ref_logps, path, "training")
            if eval_dataset is not None:
                eval_dataset = attach_ref_logps(eval_dataset, ref_logps, path, "test")
            logger.info("reference log-probs from %s (%d pairs): no reference model is loaded", path, len(ref_logps))

    # 3. Policy and reference. TRL would reload the reference from the policy's path itself, but without our
    # dtype, attention and pad-token handling; with PEFT or precomputed log-probs it needs none.
    model = load_model(model_args, training_args, tokenizer)
    ref_path = reference_model_path(model_args, training_args, script_args)
    ref_model = load_reference_model(model_args, training_args, tokenizer, model, ref_path, ref_revision)

    # 4. Trainer
    trainer = ChatalignDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
        callbacks=[RecordRunArgsCallback(configs)],
        weighted=bool(script_args.rm_weight_column),
        wis_gamma=script_args.wis_gamma if script_args.wis_importance_file else None,
        cache_prepared_data=script_args.cache_prepared_data,
        prepared_data_cache_dir=script_args.prepared_data_cache_dir,
    )

    # TRL drops pairs whose prompt alone fills max_length (no completion token would be left): count them.
    data_counts["train"]["dropped: prompt fills max_length"] = len(train_dataset) - len(trainer.train_dataset)
    if eval_dataset is not None:
        data_counts["test"]["dropped: prompt fills max_length"] = len(eval_dataset) - len(trainer.eval_dataset)

    # 5. Train, save, evaluate
    logger.info("training on %d preference pairs (%s)", len(trainer.train_dataset), data_counts["train"])
    train_save_evaluate(trainer, configs, checkpoint, data_counts, trainer.train_dataset["prompt_id"])
    return trainer


if __name__ == "__main__":
    main()
