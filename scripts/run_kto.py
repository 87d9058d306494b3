"""KTO on unpaired (prompt, completion, label) data, or nnPU-KTO on self-play data: full, LoRA or QLoRA.

    python scripts/run_kto.py recipes/smollm2-135m/kto/config_full.yaml
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml scripts/run_kto.py \
        recipes/mistral-7b/kto/config_selfplay_iter0.yaml --output_dir=data/mistral-7b-selfplay-kto-iter0

Preference sources (chosen/rejected) are unpaired while mixing: chosen -> label True, rejected -> label False.
TRL's KTO samples sequentially (its KL estimate pairs each completion with a neighbour's prompt inside a batch), so
the mixed rows are shuffled here with the recipe seed. `kto_variant: nnpu` (with `prior`) trains the non-negative PU
risk of chatalign.train.kto on (real, generated) pairs instead; every batch holds whole pairs, so the batch size is
even.
"""

from __future__ import annotations

import copy
import logging

from chatalign.configs import ChatalignParser, write_run_args
from chatalign.data.arguments import DataArguments
from chatalign.train.kto import KTOScriptArguments
from chatalign.train.models import ModelArguments
from chatalign.train.run import check_recipe, keep_secrets_out_of_files

logger = logging.getLogger("run_kto")


def make_parser() -> ChatalignParser:
    from trl import KTOConfig

    return ChatalignParser([ModelArguments, DataArguments, KTOConfig, KTOScriptArguments])


def main(argv=None):
    from chatalign.train.kto import check_kto_arguments

    parser = make_parser()
    model_args, data_args, training_args, script_args = parser.parse(argv)
    # A snapshot: what run_args.yaml records is the recipe as given, not the values adjusted below for TRL.
    configs = copy.deepcopy((model_args, data_args, training_args, script_args))
    keep_secrets_out_of_files(training_args)  # never pickled into training_args.bin
    check_kto_arguments(script_args, training_args, data_args)
    check_recipe(model_args, data_args, script_args.ref_model_name_or_path)
    nnpu = script_args.kto_variant == "nnpu"

    from chatalign.train.kto import ChatalignKTOTrainer, NNPUKTOTrainer, pair_real_generated, shuffle_rows
    from chatalign.train.models import (
        check_quantization_request,
        load_model,
        load_reference_model,
        load_training_tokenizer,
        peft_config,
        reference_model_path,
        reference_revision,
    )
    from chatalign.train.run import (
        RecordRunArgsCallback,
        load_mixture,
        resolve_resume_checkpoint,
        setup_logging,
        train_save_evaluate,
        with_prompt_ids,
    )

    # 1. Logging, checks that need no data, and the resolved config
    setup_logging(training_args)
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    checkpoint = resolve_resume_checkpoint(training_args, configs, script_args.overwrite_output_dir)
    if training_args.process_index == 0:
        write_run_args(training_args.output_dir, configs)

    # 2. Tokenizer and data: mixed and normalised to unpaired rows, then put in training order (KTO never shuffles)
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    pair_counts = {}
    with training_args.main_process_first(desc="dataset preparation"):
        # nnPU trains on (real, generated) pairs: fractions, sizes and max_samples select whole pairs by prompt_id.
        mixture = load_mixture(data_args, "unpaired", seed, tokenizer, group_column="prompt_id" if nnpu else None)
        if nnpu:
            train_dataset, pair_counts["train"] = pair_real_generated(mixture.train, seed, "train")
        else:
            train_dataset = shuffle_rows(mixture.train, seed)
        eval_dataset = None
        if mixture.test is not None and training_args.eval_strategy != "no":
            eval_dataset = mixture.test
            if nnpu:
                eval_dataset, pair_counts["test"] = pair_real_generated(eval_dataset, seed, "test")
    train_dataset = with_prompt_ids(train_dataset, "unpaired")  # for train_data_ids.csv
    labels = train_dataset["label"]
    logger.info("training rows: %d desirable/real (label True), %d undesirable/generated (label False)",
                sum(labels), len(labels) - sum(labels))

    # 3. Policy and reference. The reference is loaded like the policy (same dtype, pad token and embedding size)
    # from ref_model_name_or_path or the policy's path; none with PEFT or precomputed reference log-probs.
    model = load_model(model_args, training_args, tokenizer, padding_free=script_args.padding_free)
    ref_path = reference_model_path(model_args, training_args, script_args.ref_model_name_or_path)
    ref_model = load_reference_model(model_args, training_args, tokenizer, model, ref_path, reference_revision(
        model_args, script_args.ref_model_name_or_path, script_args.ref_model_revision),
        padding_free=script_args.padding_free)

    # 4. Trainer
    trainer_class, extra = ChatalignKTOTrainer, {}
    if nnpu:
        trainer_class, extra = NNPUKTOTrainer, {"prior": script_args.prior, "detach_kl": script_args.nnpu_detach_kl}
    trainer = trainer_class(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
        callbacks=[RecordRunArgsCallback(configs)],
        max_prompt_length=script_args.max_prompt_length,
        padding_free=script_args.padding_free,
        cache_prepared_data=script_args.cache_prepared_data,
        prepared_data_cache_dir=script_args.prepared_data_cache_dir,
        **extra,
    )

    # 5. Train, save, evaluate
    logger.info("training on %d rows (%s, beta=%s)", len(trainer.train_dataset), script_args.kto_variant,
                training_args.beta)
    counts = {split: {**pair_counts.get(split, {}), **trainer.data_counts.get(name, {})}
              for split, name in (("train", "train"), ("test", "eval"))}
    train_save_evaluate(trainer, configs, checkpoint, counts, trainer.train_dataset["prompt_id"])
    return trainer


if __name__ == "__main__":
    main()
