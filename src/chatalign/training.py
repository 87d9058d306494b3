"""What every training script shares: model arguments, tokenizer and model loading, resume, and saving a run."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from trl import ModelConfig

from chatalign.configs import write_run_args

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig plus what chatalign's loading needs."""

    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: model_name_or_path."})
    keep_pad_equal_eos: bool = field(
        default=False, metadata={"help": "Keep a pad token equal to eos (default: use a distinct pad token)."}
    )


def setup_logging(training_args) -> None:
    """chatalign and the script log at INFO on the main process; libraries follow the Trainer's log level."""
    import datasets
    import transformers

    main_process = training_args is None or training_args.process_index == 0
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)],
                        level=logging.INFO if main_process else logging.WARNING)
    library_level = training_args.get_process_log_level() if training_args is not None else logging.WARNING
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)


def load_tokenizer(model_args: ModelArguments, chat_template: str | None, trust_remote_code: bool = False):
    """The tokenizer with the recipe's chat template, or the checkpoint's own; a template is required."""
    from chatalign.model_utils import load_tokenizer as _load

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = _load(name, revision=model_args.model_revision, trust_remote_code=trust_remote_code,
                      chat_template=chat_template)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of '{name}' has no chat template: set chat_template in the recipe "
                         "(a shipped name such as chatml or zephyr, a .jinja file or a jinja string)")
    return tokenizer


def load_model(model_args: ModelArguments, training_args, tokenizer, model_name_or_path: str | None = None):
    """A causal LM in the recipe's dtype and attention, quantized where asked, with a pad token distinct from eos."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    from chatalign.model_utils import check_quantization_request, ensure_pad_token

    check_quantization_request(model_args.load_in_4bit, model_args.load_in_8bit)
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    kwargs = dict(revision=model_args.model_revision, dtype=dtype,
                  trust_remote_code=getattr(training_args, "trust_remote_code", False))
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path or model_args.model_name_or_path, **kwargs)
    action = ensure_pad_token(tokenizer, model, keep_pad_equal_eos=model_args.keep_pad_equal_eos)
    logger.info("pad token: %s", action)
    if getattr(training_args, "gradient_checkpointing", False):
        model.config.use_cache = False
    return model


def reference_model_path(model_args: ModelArguments, training_args, ref_model_name_or_path: str | None = None,
                         precomputed_file: bool = False) -> str | None:
    """The reference model a preference run must load, or None where it needs none in memory."""
    if precomputed_file:
        return None  # the log-probs come with the data
    if ref_model_name_or_path:
        return ref_model_name_or_path
    if model_args.use_peft or training_args.precompute_ref_log_probs:
        return None  # the policy with its adapter disabled / TRL's own pass with the policy before training
    # TRL would reload the policy's path itself, but without our dtype, attention and pad-token handling.
    return model_args.model_name_or_path


def load_reference_model(model_args: ModelArguments, training_args, tokenizer, policy, path: str | None):
    """The frozen reference from `path` (None: no reference model), with as many embedding rows as the policy.

    load_model may have grown the policy's embeddings for a new pad token; loading the reference afterwards finds the
    pad token already there and would not resize, yet it sees the same padded batches.
    """
    if path is None:
        return None
    ref = load_model(model_args, training_args, tokenizer, path)
    rows = policy.get_input_embeddings().weight.shape[0]
    if ref.get_input_embeddings().weight.shape[0] != rows:
        ref.resize_token_embeddings(rows)
    return ref


def peft_config(model_args: ModelArguments):
    from trl import get_peft_config

    return get_peft_config(model_args)


def resolve_resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint=true` means the newest checkpoint in output_dir; none there means a fresh start."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", "0", ""):
        return None
    if str(value).lower() in ("true", "yes", "1"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            logger.info("no checkpoint in %s: starting from scratch", training_args.output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint: '{value}' is not a checkpoint folder")
    return value


class RecordRunArgsCallback(TrainerCallback):
    """Rewrites run_args.yaml once training has begun, when the wandb run (if any) exists and has an id."""

    def __init__(self, configs, extra: dict | None = None):
        self.configs = configs
        self.extra = extra or {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_args(args.output_dir, self.configs, extra=self.extra)


def save_run(trainer, configs, metrics: dict, data_counts: dict | None = None) -> None:
    """Save the final model (gathered under ZeRO-3), its tokenizer and template, run_args.yaml, train_results.json."""
    args = trainer.args
    # Trainer.save_model gathers ZeRO-3 shards into a full state dict when the DeepSpeed config sets
    # stage3_gather_16bit_weights_on_model_save (our zero3 accelerate config does), so the end-of-training
    # checkpoint loads with from_pretrained.
    tokenizer = trainer.processing_class
    model = trainer.model
    if getattr(model, "generation_config", None) is not None and isinstance(tokenizer.chat_template, str):
        # The template's end-of-turn tokens become generation stops in the checkpoint, so every later generation
        # from it (sampling, serving, evaluation) stops where training taught the model to end a turn.
        from chatalign.chat_templates import infer_stop_strings
        from chatalign.model_utils import set_stop_tokens

        set_stop_tokens(tokenizer, model, infer_stop_strings(tokenizer.chat_template))
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)
        results = dict(metrics)
        if data_counts:
            results["data"] = data_counts
        Path(args.output_dir, "train_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        write_run_args(args.output_dir, configs)
        if _is_peft(model):
            # The folder holds an adapter: a base config.json beside it would make transformers take it for a full
            # model and fail to load it; the generation config (with the template's stop tokens) is still useful.
            model.generation_config.save_pretrained(args.output_dir)
        elif getattr(model, "config", None) is not None:
            model.config.use_cache = True
            model.config.save_pretrained(args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub(tags=["chatalign"])


def train_save_evaluate(trainer, configs, checkpoint: str | None, data_counts: dict) -> dict:
    """The end every training script shares: train (resuming where asked), save the run, evaluate if there is a test
    set. Returns the train metrics (and eval metrics under "eval")."""
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics, train_samples=len(trainer.train_dataset))
    trainer.log_metrics("train", metrics)
    trainer.save_state()
    # Final model (full even under ZeRO-3), tokenizer with its chat template, run_args.yaml, train_results.json
    save_run(trainer, configs, metrics, data_counts)
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
        trainer.log_metrics("eval", metrics["eval"])
        trainer.save_metrics("eval", metrics["eval"])
    logger.info("done: %s", trainer.args.output_dir)
    return metrics


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def count_summary(counter: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"


def load_mixture(data_args, schema: str, seed: int, tokenizer=None, extra_columns=()):
    """The recipe's dataset mixture normalised to `schema`, with its stats table logged (printed when asked)."""
    from chatalign.data import format_stats_table, mix_datasets

    if not data_args.dataset_mixer:
        raise ValueError("the recipe has no dataset_mixer: name at least one dataset source")
    mixture = mix_datasets(
        data_args.dataset_mixer, schema, splits=data_args.dataset_splits, test_split_size=data_args.test_split_size,
        seed=seed, dataset_filter=data_args.dataset_filter, dedup_column=data_args.dedup_column,
        max_samples=data_args.max_samples, skip_invalid=data_args.skip_invalid,
        dataset_format=data_args.dataset_format, tokenizer=tokenizer if data_args.show_dataset_stats else None,
        resample_each_epoch=data_args.resample_each_epoch, extra_columns=extra_columns,
    )
    table = format_stats_table(mixture.stats)
    if data_args.show_dataset_stats:
        print(table, flush=True)
    else:
        logger.info("dataset mixture:\n%s", table)
    if mixture.train is None or len(mixture.train) == 0:
        raise ValueError(f"the mixture has no training rows (splits {data_args.dataset_splits})")
    return mixture


def sft_renderer(tokenizer, max_length: int | None, with_full_length: bool = False):
    """A batched `Dataset.map` function: `messages` (and `tools`) -> `input_ids`, `labels`, cut to max_length."""
    from chatalign.chat_templates import render_conversation

    def render(batch):
        out = {"input_ids": [], "labels": []}
        if with_full_length:
            out["_full_length"] = []
        for i, messages in enumerate(batch["messages"]):
            tools = batch["tools"][i] if "tools" in batch else None
            ids, labels = render_conversation(tokenizer, messages, tools=tools or None)
            if with_full_length:
                out["_full_length"].append(len(ids))
            out["input_ids"].append(ids[:max_length] if max_length is not None else ids)
            out["labels"].append(labels[:max_length] if max_length is not None else labels)
        return out

    return render


def tokenize_sft(dataset, tokenizer, max_length: int | None, overflow: str = "truncate", split: str = "train"):
    """Render `messages` rows to `input_ids` + `labels` (assistant tokens only); count what max_length cuts.

    Returns the tokenized dataset and counts: rows truncated, rows dropped as too long (overflow='drop'), rows
    dropped because no assistant token survived. Nothing is dropped silently.
    """
    from chatalign.chat_templates import IGNORE_INDEX

    render = sft_renderer(tokenizer, max_length, with_full_length=True)
    tokenized = dataset.map(render, batched=True, remove_columns=dataset.column_names,
                            desc=f"rendering {split} conversations")
    full = tokenized["_full_length"]
    too_long = [n > max_length for n in full] if max_length is not None else [False] * len(full)
    trainable = [any(x != IGNORE_INDEX for x in labels) for labels in tokenized["labels"]]
    counts = Counter()
    keep = []
    for i, (long_row, has_target) in enumerate(zip(too_long, trainable, strict=True)):
        if long_row and overflow == "drop":
            counts["dropped: longer than max_length"] += 1
        elif not has_target:
            counts["dropped: no assistant token within max_length" if long_row else "dropped: no assistant turn"] += 1
        else:
            counts["truncated to max_length" if long_row else "kept whole"] += 1
            keep.append(i)
    if len(keep) < len(tokenized):
        tokenized = tokenized.select(keep)
    tokenized = tokenized.remove_columns("_full_length")
    logger.info("%s rows after rendering (max_length=%s, overflow=%s): %s", split, max_length, overflow,
                count_summary(counts))
    if len(tokenized) == 0:
        raise ValueError(f"no {split} row has an assistant token within max_length={max_length}: {dict(counts)}")
    return tokenized, dict(counts)
