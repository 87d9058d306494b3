"""Supervised fine-tuning of a chat model: full, LoRA or QLoRA, assistant-only loss, packing or padding-free batches.

    python scripts/run_sft.py recipes/smollm2-135m/sft/config_full.yaml
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml scripts/run_sft.py \
        recipes/zephyr-7b-beta/sft/config_full.yaml --learning_rate=1e-5

Conversations are rendered with the chat template to (input_ids, labels) by chatalign, so every system, user and
tool-output token is masked (including the code-output user turns of math chats) and TRL trains on exactly those
labels. `mask_user_labels: false` trains on every token instead (LION's key); TRL's assistant_only_loss and
completion_only_loss map onto it, chat_template_path onto chat_template, and eos_token or dataset_text_field (which
this rendering would ignore) are errors. Rows longer than max_length are truncated or dropped (`overflow`), and both
are counted in the log.
"""

from __future__ import annotations

import copy
import logging

from chatalign.configs import ChatalignParser, write_run_args
from chatalign.data.arguments import DataArguments
from chatalign.train.models import ModelArguments
from chatalign.train.run import check_recipe, keep_secrets_out_of_files
from chatalign.train.sft import SFTScriptArguments

logger = logging.getLogger("run_sft")


def make_parser() -> ChatalignParser:
    from trl import SFTConfig

    return ChatalignParser([ModelArguments, DataArguments, SFTConfig, SFTScriptArguments])


def main(argv=None):
    parser = make_parser()
    model_args, data_args, training_args, script_args = parser.parse(argv)
    # A snapshot: what run_args.yaml records is the recipe as given, not the values adjusted below for TRL.
    configs = copy.deepcopy((model_args, data_args, training_args, script_args))
    keep_secrets_out_of_files(training_args)  # never pickled into training_args.bin

    from trl import SFTTrainer

    from chatalign.data.rendering import preflight_report
    from chatalign.data.sampling import ResampleEachEpochCallback
    from chatalign.train.models import check_quantization_request, load_model, load_training_tokenizer, peft_config
    from chatalign.train.run import (
        RecordRunArgsCallback,
        RecordTrainDataIdsCallback,
        load_mixture,
        prompt_id_filler,
        resolve_resume_checkpoint,
        setup_logging,
        train_save_evaluate,
        with_prompt_ids,
    )
    from chatalign.train.sft import check_sft_arguments, sft_renderer, tokenize_sft

    # 1. Logging, checks that need no data, and the resolved config
    check_sft_arguments(training_args, data_args, script_args, parser.sources)
    check_recipe(model_args, data_args)
    setup_logging(training_args)
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    checkpoint = resolve_resume_checkpoint(training_args, configs, script_args.overwrite_output_dir)
    if training_args.process_index == 0:
        write_run_args(training_args.output_dir, configs)

    # 2. Tokenizer and data: mixed, validated, rendered to (input_ids, labels)
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    with training_args.main_process_first(desc="dataset preparation"):
        mixture = load_mixture(data_args, "sft", training_args.seed, tokenizer)
        report, warnings = preflight_report(tokenizer, mixture.train[0]["messages"], color=False)
        logger.info("pre-flight: first training example, trained tokens in [[ ]]:\n%s", report)
        for warning in warnings:
            logger.warning("pre-flight: %s", warning)
        prepared_data = dict(mask_user_labels=script_args.mask_user_labels, num_proc=training_args.dataset_num_proc,
                             use_cache=script_args.cache_prepared_data, cache_dir=script_args.prepared_data_cache_dir)
        train_dataset, train_counts = tokenize_sft(with_prompt_ids(mixture.train, "sft"), tokenizer,
                                                   training_args.max_length, script_args.overflow, "train",
                                                   keep_columns=("prompt_id",), **prepared_data)
        train_ids = train_dataset["prompt_id"]  # the rows kept, for train_data_ids.csv
        train_dataset = train_dataset.remove_columns("prompt_id")
        eval_dataset, eval_counts = (None, {})
        if mixture.test is not None and training_args.eval_strategy != "no":
            eval_dataset, eval_counts = tokenize_sft(mixture.test, tokenizer, training_args.max_length,
                                                     script_args.overflow, "test", **prepared_data)

    # 3. Model. Rows are already rendered and cut to max_length, so TRL must not truncate again; padding-free
    # batches without packing require max_length=None in TRL.
    model = load_model(model_args, training_args, tokenizer)
    max_length = training_args.max_length
    if training_args.padding_free and not training_args.packing:
        training_args.max_length = None

    # 4. Trainer
    callbacks = [RecordRunArgsCallback(configs)]
    resampled = None
    if mixture.train_resampled is not None:
        # Every pool row is rendered once and truncated to max_length (overflow: drop is refused with resampling:
        # dropping rows would change the per-source sizes that each epoch redraws).
        pools = mixture.train_resampled
        resampled = pools.map_pools(sft_renderer(tokenizer, max_length, mask_user_labels=script_args.mask_user_labels),
                                    batched=True,
                                    remove_columns=pools.pool.column_names)
        callbacks.append(ResampleEachEpochCallback(resampled))
        # Each epoch draws its own rows: train_data_ids.csv records every epoch's, as each begins.
        callbacks.append(RecordTrainDataIdsCallback(pools.map_pools(prompt_id_filler("sft"), batched=True)))
        train_ids = None
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
        callbacks=callbacks,
    )
    if resampled is not None:
        # TRL only accepts a datasets.Dataset (epoch 0 above); the Trainer then reads whatever train_dataset is.
        trainer.train_dataset = train_dataset = resampled

    # 5. Train, save, evaluate
    logger.info("training on %d rows (%s)", len(train_dataset), train_counts)
    train_save_evaluate(trainer, configs, checkpoint, {"train": train_counts, "test": eval_counts}, train_ids)
    return trainer


if __name__ == "__main__":
    main()
