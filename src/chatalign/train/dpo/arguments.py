"""The recipe keys run_dpo adds to TRL's DPOConfig, and the config errors that need no data or model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatalign.configs import ConfigError
from chatalign.train.dpo.selection import parse_preference_config
from chatalign.train.models import reference_model_path as shared_rule
from chatalign.train.run import PreparedDataArguments, check_recipe

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
class DPOScriptArguments(PreparedDataArguments):
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
    rm_importance_file: str | None = field(
        default=None,
        metadata={
            "help": "lm_rewards.jsonl of scripts/compute_lm_reward.py: LION's rm_importance selection (pairs with "
            "weight >= rm_importance_min_weight, max_data_size of them drawn towards a bimodal weight distribution)."
        },
    )
    rm_importance_min_weight: float = field(
        default=0.1, metadata={"help": "rm_importance: pairs with a smaller weight are never trained on (LION: 0.1)."}
    )
    wis_importance_file: str | None = field(
        default=None,
        metadata={
            "help": "importance_weights.jsonl of scripts/compute_importance_weight.py: LION's wis loss weight "
            "sigmoid(wis_gamma * ((log pi(y_w) - log mu(y_w)) + (log pi(y_l) - log mu(y_l)))) + 1e-6 per pair."
        },
    )
    wis_gamma: float = field(default=0.01, metadata={"help": "wis: the gamma of the weight (LION: 0.01)."})
    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "With precompute_ref_log_probs and no precompute_file_path: where reference log-probs are cached, "
            "keyed by a hash of what they depend on (default $CHATALIGN_CACHE, else ~/.cache/chatalign); "
            "precompute_ref_logprobs.py with no file fills it, a multi-process run_dpo reads it when it holds every "
            "pair."
        },
    )
    precompute_file_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference log-probs written by scripts/precompute_ref_logprobs.py: run_dpo then loads no reference "
            "model; precompute_ref_logprobs.py writes (or completes) this file (none named: the cache of "
            "ref_logps_cache_dir)."
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
    if script_args.wis_importance_file:
        bad = [t for t in training_args.loss_type if t in UNWEIGHTABLE_LOSS_TYPES]
        if bad:
            raise ConfigError(f"wis_importance_file cannot weight loss_type '{bad[0]}': "
                              f"{UNWEIGHTABLE_LOSS_TYPES[bad[0]]}")
        if script_args.wis_gamma <= 0 or not math.isfinite(script_args.wis_gamma):
            raise ConfigError(f"wis_gamma must be a positive number, got {script_args.wis_gamma}")
    if script_args.rm_importance_file and script_args.preference_config is not None:
        raise ConfigError("rm_importance_file and preference_config are two ways of selecting pairs: give one")
    if not 0 <= script_args.rm_importance_min_weight < 1:
        raise ConfigError(f"rm_importance_min_weight must be in [0, 1), got {script_args.rm_importance_min_weight}")
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


def check_input_files(script_args) -> None:
    """The analysis files a run reads exist (a recipe may name one that an earlier step of its chain writes)."""
    for key, writer in (("rm_importance_file", "compute_lm_reward"), ("wis_importance_file", "compute_importance_weight")):
        path = getattr(script_args, key, None)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key} {path} does not exist (written by scripts/{writer}.py)")


def check_dpo_run(model_args, data_args, training_args, script_args) -> None:
    """Every check of a DPO recipe that needs no data or model: its keys, the analysis files it reads, the models and
    data it names (shared by run_dpo, precompute_ref_logprobs and compute_lm_reward)."""
    check_dpo_arguments(training_args, data_args, script_args)
    check_input_files(script_args)
    check_recipe(model_args, data_args, script_args.ref_model_name_or_path)


def ref_cache_mode(model_args, training_args, script_args) -> str | None:
    """How run_dpo uses the dependency-keyed cache of reference log-probs: "compute" (one process: load what is
    there, compute what is missing), "read" (several processes: use a cache holding every pair, else TRL's own in-run
    pass, which shards the reference over the ranks; one rank cannot run a ZeRO-3 reference alone), or None: no
    precompute_ref_log_probs, a file named, quantization (TRL's pass refuses a quantized model without an adapter) or a
    synced reference."""
    if not training_args.precompute_ref_log_probs or script_args.precompute_file_path:
        return None
    if model_args.load_in_4bit or model_args.load_in_8bit or training_args.sync_ref_model:
        return None
    return "compute" if training_args.world_size == 1 else "read"

