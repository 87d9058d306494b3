"""What every training run shares, in the order a script uses it: logging, the data mixture, resume, then the tail
(train, save the run, evaluate)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from chatalign.configs import RUN_ARGS_FILE, ConfigError, read_run_args, resolved_args, write_run_args
from chatalign.data.mixer import check_mixer, mix_datasets
from chatalign.data.rendering import empty_system_message_inserter, template_renders_system
from chatalign.data.sources import looks_like_path
from chatalign.data.stats import format_stats_table
from chatalign.data.templates import infer_stop_strings
from chatalign.data.tokenizers import set_stop_tokens
from chatalign.store import prompt_id, write_text
from chatalign.train.models import is_peft

logger = logging.getLogger(__name__)


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


def count_summary(counter: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"


def check_recipe(model_args, data_args, ref_model_name_or_path: str | None = None) -> None:
    """What every training run needs, checked before anything is read or downloaded: a model and a reference that
    exist (a missing local path is not looked up on the hub) and a mixer that draws rows."""
    for key, name in (("model_name_or_path", model_args.model_name_or_path),
                      ("ref_model_name_or_path", ref_model_name_or_path)):
        if key == "model_name_or_path" and not name:
            raise ConfigError("the recipe names no model: set model_name_or_path (a checkpoint folder or a hub id)")
        if name and looks_like_path(name) and not Path(name).expanduser().exists():
            raise ConfigError(f"{key} '{name}': no such checkpoint folder")
    if not data_args.dataset_mixer:
        raise ConfigError("the recipe has no dataset_mixer: name at least one dataset source")
    check_mixer(data_args.dataset_mixer)


def load_mixture(data_args, schema: str, seed: int, tokenizer=None, extra_columns=(), group_column: str | None = None):
    """The recipe's dataset mixture normalised to `schema`, with its stats table logged (printed when asked);
    `group_column` selects whole groups of rows (see chatalign.data.mixer.mix_datasets)."""
    if not data_args.dataset_mixer:
        raise ValueError("the recipe has no dataset_mixer: name at least one dataset source")
    mixture = mix_datasets(
        data_args.dataset_mixer, schema, splits=data_args.dataset_splits, test_split_size=data_args.test_split_size,
        seed=seed, dataset_filter=data_args.dataset_filter, dedup_column=data_args.dedup_column,
        max_samples=data_args.max_samples, skip_invalid=data_args.skip_invalid,
        dataset_format=data_args.dataset_format, tokenizer=tokenizer if data_args.show_dataset_stats else None,
        resample_each_epoch=data_args.resample_each_epoch, extra_columns=extra_columns, group_column=group_column,
    )
    if getattr(data_args, "auto_insert_empty_system_msg", False):
        insert_empty_system_messages(mixture, schema, tokenizer)
    table = format_stats_table(mixture.stats)
    if data_args.show_dataset_stats:
        print(table, flush=True)
    else:
        logger.info("dataset mixture:\n%s", table)
    if mixture.train is None or len(mixture.train) == 0:
        per_source = "; ".join(f"'{r.source}' [{r.split}]: {r.available} rows, {r.valid} valid, {r.final} drawn"
                               for r in mixture.stats.rows if r.split.startswith("train"))
        raise ValueError(f"the mixture has no training rows (splits {data_args.dataset_splits}): {per_source}")
    return mixture


def insert_empty_system_messages(mixture, schema: str, tokenizer) -> None:
    """auto_insert_empty_system_msg, in place on the mixture, as alignment-handbook does: only where the template
    renders system messages."""
    template = (tokenizer.chat_template if tokenizer is not None else None) or ""
    if not isinstance(template, str) or not template_renders_system(template):
        logger.info("auto_insert_empty_system_msg: the chat template renders no system message; nothing inserted")
        return
    insert = empty_system_message_inserter(schema)
    for name in ("train", "test"):
        split = getattr(mixture, name)
        if split is not None:
            setattr(mixture, name, split.map(insert, batched=True, desc=f"empty system message ({name})"))
    if mixture.train_resampled is not None:
        mixture.train_resampled = mixture.train_resampled.map_pools(insert, batched=True)


@dataclass
class RunArguments:
    """Recipe keys of every training run's output folder (part of each training script's own arguments)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds another run's checkpoints; they are moved to "
                          "<output_dir>/previous-run-<time>/, never deleted."},
    )


@dataclass
class PreparedDataArguments(RunArguments):
    """Recipe keys of the training runs that tokenize their data before training (SFT, DPO, KTO)."""

    cache_prepared_data: bool = field(
        default=True,
        metadata={"help": "Keep the rendered and tokenized rows on disk, keyed by a hash of the rows, tokenizer, "
                          "template and settings; a later run with the same ones loads them."},
    )
    prepared_data_cache_dir: str | None = field(
        default=None, metadata={"help": "Where (default $CHATALIGN_CACHE, else ~/.cache/chatalign)."}
    )


# The keys that make two runs the same run: a run may be resumed with other max_steps, logging or evaluation
# settings, but not on another model, other data, another seed or another loss.
RUN_IDENTITY = ("model_name_or_path", "model_revision", "ref_model_name_or_path", "ref_model_revision", "dataset_mixer",
                "dataset_splits", "dataset_format", "dataset_filter", "dedup_column", "test_split_size", "max_samples",
                "chat_template", "seed", "data_seed", "use_peft", "max_data_size", "preference_config",
                "preference_sampling", "kto_variant", "loss_type", "beta")


def other_run(output_dir: str | Path, configs) -> str | None:
    """Why the checkpoints in output_dir are not this run's (its run_args.yaml disagrees), or None if they are."""
    stored = read_run_args(output_dir)
    if stored is None:
        return "no run_args.yaml says which run wrote them"
    before, now = stored.get("args") or {}, resolved_args(configs)
    diffs = [f"{key}: {before[key]!r} -> {now.get(key)!r}" for key in RUN_IDENTITY
             if key in before and before[key] != now.get(key)]
    return "; ".join(diffs) or None


def resolve_resume_checkpoint(training_args, configs, overwrite_output_dir: bool = False) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint=true` means the newest in output_dir; none there means
    a fresh start. An output_dir whose checkpoints belong to another run (its run_args.yaml disagrees on a key of
    RUN_IDENTITY) is refused, or with overwrite_output_dir has them moved aside; it is never resumed from."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    resume = value is not None and str(value).lower() not in ("false", "no", "0", "")
    output_dir = Path(training_args.output_dir)
    checkpoints = sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir()) if output_dir.is_dir() else []
    why = other_run(output_dir, configs) if checkpoints else None
    if why is not None:
        if resume and str(value).lower() in ("true", "yes", "1"):
            raise ConfigError(f"output_dir {output_dir} holds checkpoints of another run ({why}): resuming would "
                              "continue that run, not this one; use another output_dir")
        if not overwrite_output_dir:
            raise ConfigError(f"output_dir {output_dir} holds checkpoints of another run ({why}); use another "
                              "output_dir, or set overwrite_output_dir: true to move them aside and start afresh")
        if training_args.process_index == 0:
            aside = output_dir / f"previous-run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
            aside.mkdir()
            for path in [*checkpoints, output_dir / RUN_ARGS_FILE]:
                if path.exists():
                    shutil.move(str(path), str(aside / path.name))
            logger.warning("overwrite_output_dir: moved %d checkpoints of another run to %s", len(checkpoints), aside)
    if not resume:
        return None
    if str(value).lower() in ("true", "yes", "1"):
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            logger.info("no checkpoint in %s: starting from scratch", output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint: '{value}' is not a checkpoint folder")
    return value


def keep_secrets_out_of_files(training_args) -> None:
    """The Trainer pickles its arguments into training_args.bin (in output_dir and every checkpoint, pushed to the hub
    with them): a hub_token given in the recipe or on the command line moves to this process's HF_TOKEN, which
    huggingface_hub reads when pushing, so no file of the run holds it."""
    token = getattr(training_args, "hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = token
        training_args.hub_token = None


# --------------------------------------------------------------------------------------------------------------------
# train_data_ids.csv: which examples a run trained on (LION's file, read by the analysis scripts)

TRAIN_DATA_IDS = "train_data_ids.csv"


def prompt_id_filler(schema: str):
    """A batched ``Dataset.map`` function giving every row a prompt_id: its own, else the store's id of its prompt
    (for an sft row, the messages before its final reply)."""
    column = "messages" if schema == "sft" else "prompt"

    def fill(batch):
        given = batch.get("prompt_id") or [None] * len(batch[column])
        return {"prompt_id": [pid or prompt_id(conversation[:-1] if schema == "sft" else conversation)
                              for pid, conversation in zip(given, batch[column], strict=True)]}

    return fill


def with_prompt_ids(dataset, schema: str):
    """The dataset with a prompt_id on every row (see prompt_id_filler)."""
    return dataset.map(prompt_id_filler(schema), batched=True, desc="prompt ids")


def write_train_data_ids(output_dir, ids, epochs=None) -> Path:
    """<output_dir>/train_data_ids.csv: a column prompt_id, one row per training example; when every epoch draws
    its own rows, an epoch column says which epoch drew each."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt_id"] if epochs is None else ["prompt_id", "epoch"])
    writer.writerows([[i] for i in ids] if epochs is None else zip(ids, epochs, strict=True))
    return write_text(Path(output_dir) / TRAIN_DATA_IDS, buffer.getvalue())


class RecordTrainDataIdsCallback(TrainerCallback):
    """With resample_each_epoch: at every epoch start, train_data_ids.csv gets the rows of every epoch so far. Each
    epoch's draw is a pure function of the seed, so a resumed run writes the same file."""

    def __init__(self, resampled):
        self.resampled = resampled  # an EpochResampledDataset whose pools carry prompt_id

    def on_epoch_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            column = self.resampled.pool["prompt_id"]
            current = int(math.floor((state.epoch or 0.0) + 1e-9))
            draws = [(column[i], epoch) for epoch in range(current + 1) for i in self.resampled.epoch_indices(epoch)]
            write_train_data_ids(args.output_dir, [d[0] for d in draws], [d[1] for d in draws])
        return control


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
        set_stop_tokens(tokenizer, model, infer_stop_strings(tokenizer.chat_template))
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)
        results = dict(metrics)
        if data_counts:
            results["data"] = data_counts
        Path(args.output_dir, "train_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        write_run_args(args.output_dir, configs)
        if is_peft(model):
            # The folder holds an adapter: a base config.json beside it would make transformers take it for a full
            # model and fail to load it; the generation config (with the template's stop tokens) is still useful.
            model.generation_config.save_pretrained(args.output_dir)
        elif getattr(model, "config", None) is not None:
            model.config.use_cache = True
            model.config.save_pretrained(args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub(tags=["chatalign"])


def train_save_evaluate(trainer, configs, checkpoint: str | None, data_counts: dict,
                        train_ids: list[str] | None = None) -> dict:
    """The end every training script shares: train (resuming where asked), save the run, evaluate if there is a test
    set. `train_ids` (the prompt_id of every training example) go to train_data_ids.csv first. Returns the train
    metrics (and eval metrics under "eval")."""
    if train_ids is not None and trainer.is_world_process_zero():
        write_train_data_ids(trainer.args.output_dir, train_ids)
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
