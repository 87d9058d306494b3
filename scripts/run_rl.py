"""Online RL from rewards with TRL's GRPO or RLOO trainer: full, LoRA or QLoRA, rewards from functions, reward models
and LLM judges combined with weights.

    python scripts/run_rl.py recipes/smollm2-135m/rl/config_grpo_gsm8k.yaml
    python scripts/run_rl.py recipe.yaml --rl_algorithm rloo --max_steps 50
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml scripts/run_rl.py \
        recipes/zephyr-7b-beta/rl/config_grpo.yaml

Prompts come from the mixer in the prompt schema (prompt rows, the prompt of sft rows with their last reply as
`reference`, of preference rows with the chosen reply, the ToRA GSM8K rows with their `gt`); `prompt`, `reference`,
`prompt_id` and `source` reach the reward functions by name, and so do the raw columns the recipe lists in
`reward_columns` (every source must have them; sources converted from sft or preference rows carry none).
Rewards (recipe key `rewards`, see chatalign.train.rewards):
  function:<module:function>    a TRL reward function, e.g. chatalign.train.rewards:gsm8k_correctness
  reward_model:<checkpoint>     an AutoModelForSequenceClassification, with its own tokenizer and chat template
  judge:<judge spec>            an LLM judge rating 1 to 10 (llm:<model>@<url>, a local checkpoint), cached
Generation during training: vLLM where installed with a GPU and use_cpu is off (TRL's use_vllm, vllm_mode colocate
or server), else in process (generation_backend). Logged per step: rewards/<name>/mean and /std, reward, kl (beta > 0),
completions/mean_length; a few sampled completions go to <output_dir>/sampled_completions.jsonl.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

from chatalign.configs import ChatalignParser, write_run_args
from chatalign.data.arguments import DataArguments
from chatalign.judges.loading import JudgeArguments
from chatalign.train.models import ModelArguments
from chatalign.train.rl import RLScriptArguments, requested_algorithm, trainer_classes
from chatalign.train.run import check_recipe, keep_secrets_out_of_files

logger = logging.getLogger("run_rl")


def make_parser(rl_algorithm: str = "grpo") -> ChatalignParser:
    config_class, _ = trainer_classes(rl_algorithm)  # ppo (unsupported): an error before anything is read
    return ChatalignParser([ModelArguments, DataArguments, config_class, RLScriptArguments, JudgeArguments])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    algorithm = requested_algorithm(argv)
    parser = make_parser(algorithm)
    model_args, data_args, training_args, script_args, judge_args = parser.parse(argv)
    # A snapshot: what run_args.yaml records is the recipe as given, not the values adjusted below for TRL.
    configs = copy.deepcopy((model_args, data_args, training_args, script_args, judge_args))
    keep_secrets_out_of_files(training_args)  # never pickled into training_args.bin

    from chatalign.data.templates import infer_stop_strings
    from chatalign.data.tokenizers import set_stop_tokens
    from chatalign.train.models import check_quantization_request, load_model, load_training_tokenizer, peft_config
    from chatalign.train.rewards import build_rewards
    from chatalign.train.rl import (
        check_rl_run,
        check_same_rl_run,
        check_vllm_vocabulary,
        drop_long_prompts,
        judge_cache_files,
        prune_sampled_completions,
        resolve_generation_backend,
        with_system_prompt,
    )
    from chatalign.train.run import (
        RecordRunArgsCallback,
        load_mixture,
        resolve_resume_checkpoint,
        setup_logging,
        train_save_evaluate,
        with_prompt_ids,
    )

    # 1. Logging, checks that need no data or model (rewards, generation backend), and the resolved config
    setup_logging(training_args)
    specs = check_rl_run(script_args, training_args, data_args)
    check_recipe(model_args, data_args)
    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    backend = resolve_generation_backend(script_args, training_args)
    training_args.reward_weights = [spec.weight for spec in specs]
    checkpoint = resolve_resume_checkpoint(training_args, configs, script_args.overwrite_output_dir)
    check_same_rl_run(training_args.output_dir, configs, checkpoint)
    if training_args.process_index == 0:
        write_run_args(training_args.output_dir, configs)
        # The file is appended to: rows of steps this run trains (again) would otherwise appear twice.
        prune_sampled_completions(training_args.output_dir, checkpoint)

    # 2. Tokenizer and prompts: mixed in the prompt schema, the recipe's system prompt, too-long prompts dropped
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    if training_args.use_vllm:
        check_vllm_vocabulary(tokenizer, model_args, training_args.trust_remote_code)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    data_counts = {}
    with training_args.main_process_first(desc="dataset preparation"):
        mixture = load_mixture(data_args, "prompt", seed, tokenizer, extra_columns=script_args.reward_columns or ())
        train_dataset, data_counts["train"] = drop_long_prompts(
            with_system_prompt(mixture.train, script_args.system_prompt), tokenizer, script_args.max_prompt_length)
        eval_dataset = None
        if mixture.test is not None and training_args.eval_strategy != "no":
            eval_dataset, data_counts["test"] = drop_long_prompts(
                with_system_prompt(mixture.test, script_args.system_prompt), tokenizer, script_args.max_prompt_length,
                "test")
        train_dataset = with_prompt_ids(train_dataset, "prompt")  # for train_data_ids.csv

    # 3. Policy and rewards. The template's end-of-turn tokens stop generation (TRL stops at every eos id of the
    # generation config). TRL builds the frozen reference itself from the policy's path (beta > 0, no PEFT).
    model = load_model(model_args, training_args, tokenizer)
    set_stop_tokens(tokenizer, model, infer_stop_strings(tokenizer.chat_template))
    cache_path, read_also = judge_cache_files(  # one writer per file; every process reads the others' judgments
        script_args.judge_cache_file or Path(training_args.output_dir) / "reward_judgments.jsonl",
        training_args.world_size, training_args.process_index)
    rewards = build_rewards(specs, judge_args, cache_path, read_also, device=training_args.device)

    # 4. Trainer
    _, trainer_class = trainer_classes(algorithm)
    trainer = trainer_class(
        model=model,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
        callbacks=[RecordRunArgsCallback(configs)],
        sampled_completions=script_args.sampled_completions,
    )

    # 5. Train, save, evaluate
    logger.info("%s on %d prompts x %d generations; rewards %s; generation: %s", algorithm, len(train_dataset),
                training_args.num_generations, ", ".join(f"{s.display_name} x {s.weight:g}" for s in specs), backend)
    train_save_evaluate(trainer, configs, checkpoint, data_counts, train_dataset["prompt_id"])
    return trainer


if __name__ == "__main__":
    main()
