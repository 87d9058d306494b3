"""The recipe keys run_dpo adds to TRL's DPOConfig, and the config errors that need no data or model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from chatalign.configs import ConfigError
from chatalign.train.dpo.selection import parse_preference_config
from chatalign.train.models import reference_model_path as shared_rule
from chatalign.train.run import RunArguments

# Every DPO loss TRL 1.16 implements (`DPOTrainer._compute_loss`); DPOConfig itself accepts any string.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# Losses that are not a sum of independent per-pair terms, so a per-pair weight has no meaning for them.
UNWEIGHTABLE_LOSS_TYPES = {
    "aot": "it sorts the log-ratios across the batch, so a loss term belongs to no single pair",
    "aot_unpaired": "it sorts the log-ratios across the batch, so a loss term belongs to no single pair",
    "sft": "it is one token-level mean over the whole batch, not a per-pair loss",
}


@dataclass
class DPOScriptArguments(RunArguments):
    """Recipe keys of run_dpo beyond TRL's DPOConfig."""

    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reference model (default: model_name_or_path; with PEFT the adapter-disabled model)."},
    )
    ref_model_revision: str | None = field(
        default=None,
        metadata={"help": "Revision of ref_model_name_or_path (default: main; the policy's model_revision when the "
                          "reference is the policy itself)."},
    )
    max_data_size: int | None = field(
        default=None, metadata={"help": "Train on a seeded random subset of this many preference pairs."}
    )
    preference_config: dict[Any, Any] | None = field(
        default=None,
        metadata={
            "help": "Weight per score difference (score_chosen - score_rejected): {-100: weight of every difference "
            "not listed, 1: 2.0, 5: 0.5}. With preference_sampling quota (LION's rule) a bin is a difference floored "
            "to 0..9 and gets int((max_data_size // sum of the 10 weights) * weight) pairs."
        },
    )
    preference_sampling: Literal["quota", "weighted"] = field(
        default="quota",
        metadata={
            "help": "quota: LION's fixed number of pairs per bin ({-100: 1.0} is the same count per bin). weighted: "
            "rows sampled with probability proportional to their bucket's weight (rounded difference) within "
            "max_data_size, keeping the data's spread."
        },
    )
    rm_weight_column: str | None = field(
        default=None, metadata={"help": "Column whose per-pair value multiplies that pair's DPO loss."}
    )
    precompute_file_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference log-probs written by scripts/precompute_ref_logprobs.py: run_dpo then loads no reference "
            "model; precompute_ref_logprobs.py writes (or completes) this file."
        },
    )


def check_dpo_arguments(training_args, data_args, script_args) -> None:
    """Config errors that need no data or model: raised before anything is loaded."""
    unknown = [t for t in training_args.loss_type if t not in TRL_LOSS_TYPES]
    if unknown:
        raise ConfigError(f"loss_type {unknown} unknown: TRL's DPO losses are {', '.join(TRL_LOSS_TYPES)}")
    if script_args.rm_weight_column:
        bad = [t for t in training_args.loss_type if t in UNWEIGHTABLE_LOSS_TYPES]
        if bad:
            raise ConfigError(
                f"rm_weight_column cannot weight loss_type '{bad[0]}': {UNWEIGHTABLE_LOSS_TYPES[bad[0]]}. "
                f"Weighted loss types: {', '.join(t for t in TRL_LOSS_TYPES if t not in UNWEIGHTABLE_LOSS_TYPES)}"
            )
    if script_args.max_data_size is not None and script_args.max_data_size < 1:
        raise ConfigError(f"max_data_size must be a positive number of pairs, got {script_args.max_data_size}")
    if script_args.preference_config is not None:
        parse_preference_config(script_args.preference_config, script_args.preference_sampling)
        if script_args.preference_sampling == "quota" and script_args.max_data_size is None:
            raise ConfigError("preference_config with preference_sampling quota (LION's rule) needs max_data_size: "
                              "each bin's quota is int((max_data_size // sum of the bin weights) * weight)")
    if getattr(data_args, "resample_each_epoch", False):
        raise ConfigError("resample_each_epoch is not supported by run_dpo: DPOTrainer tokenises its dataset once")
    if script_args.precompute_file_path:
        if training_args.sync_ref_model:
            raise ConfigError("precompute_file_path fixes the reference, so it cannot be combined with sync_ref_model")
        # TRL's own switch for "reference log-probs come with the data": no reference model is loaded.
        training_args.precompute_ref_log_probs = True


def reference_model_path(model_args, training_args, script_args) -> str | None:
    """The reference model run_dpo must load, or None when it needs none in memory."""
    return shared_rule(model_args, training_args, script_args.ref_model_name_or_path,
                       precomputed_file=bool(script_args.precompute_file_path))
