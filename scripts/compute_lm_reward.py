"""Implicit DPO rewards of every pair of a preference set, and LION's importance weight from them.

    python scripts/compute_lm_reward.py recipes/zephyr-7b-beta/analysis/config_lm_reward.yaml \
        --model_name_or_path=alignment-handbook/zephyr-7b-sft-full \
        --ref_model_name_or_path=model_checkpoints/zephyr-7b-dpo-full --output_dir=data/analysis/dpo_v_sft
    python scripts/run_dpo.py recipe.yaml --rm_importance_file=data/analysis/dpo_v_sft/lm_rewards.jsonl \
        --max_data_size=20000

For a policy (model_name_or_path) and a reference (ref_model_name_or_path), each pair gets
chosen_reward = beta * (log pi(y_w|x) - log pi_ref(y_w|x)), the same for the rejected response, the margin
chosen_reward - rejected_reward and weight = sigmoid(rejected_reward - chosen_reward), as LION computes it. With
LION's configuration, the SFT model as policy and the DPO model as reference, that weight is the sigmoid of the DPO
model's implicit reward margin: the probability that the DPO model prefers the chosen response. run_dpo's
rm_importance_file selection reads it.

The recipe is a run_dpo recipe (the same data keys, beta, max_length, chat_template, dtype), so the rows and their
templating are those of the DPO run; log-probs are TRL's reference pass over each model. A precompute_file_path from
scripts/precompute_ref_logprobs.py is reused for whichever of the two models it was computed with (its dependencies
are compared); the other model's log-probs are cached in <output_dir>/.work/, so a rerun, or a run with one model
changed, computes only what it lacks.

Output in output_dir: lm_rewards.jsonl (one row per pair: pair_id, prompt_id, source, the four log-probs, both rewards,
margin, weight), lm_reward_summary.json (implicit-reward accuracy against the labels, margin and weight quantiles),
lm_reward_margins.png (histograms of the margin and the weight).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from chatalign.configs import ChatalignParser, ConfigError
from chatalign.data.arguments import DataArguments
from chatalign.train.dpo.arguments import DPOScriptArguments
from chatalign.train.models import ModelArguments

logger = logging.getLogger("compute_lm_reward")


def make_parser() -> ChatalignParser:
    from trl import DPOConfig

    return ChatalignParser([ModelArguments, DataArguments, DPOConfig, DPOScriptArguments])


def main(argv=None):
    parser = make_parser()
    model_args, data_args, training_args, script_args = parser.parse(argv)

    from datasets import concatenate_datasets

    from chatalign.analysis.lm_reward import format_reward_summary, plot_margins, reward_rows, reward_summary
    from chatalign.analysis.sequence_logps import LogpsModel, dependencies_of, logps_of_rows, pair_logps
    from chatalign.store import write_jsonl, write_text
    from chatalign.train.dpo.arguments import check_dpo_run
    from chatalign.train.dpo.importance import LM_REWARD_FILE
    from chatalign.train.dpo.reference import dependency_mismatch, pair_keys, read_ref_logps_file
    from chatalign.train.dpo.selection import load_preference_data
    from chatalign.train.models import load_training_tokenizer, reference_revision
    from chatalign.train.run import setup_logging

    # 1. Checks that need no data or model
    if not script_args.ref_model_name_or_path:
        raise ConfigError("ref_model_name_or_path is required: the reference of the implicit reward (LION: the DPO "
                          "model, with the SFT model as model_name_or_path)")
    check_dpo_run(model_args, data_args, training_args, script_args)
    setup_logging(training_args)
    out = Path(training_args.output_dir)
    work = out / ".work"

    # 2. Tokenizer (the policy's, as in the DPO run) and the rows the DPO run would see
    tokenizer = load_training_tokenizer(model_args, data_args.chat_template, training_args.trust_remote_code,
                                        parser.sources)
    train, evaluation, data_counts = load_preference_data(data_args, training_args, script_args, tokenizer)
    rows = train if evaluation is None else concatenate_datasets([train, evaluation])
    keys = pair_keys(rows)

    # 3. The two models' log-probs; a precomputed reference file serves whichever model it was made with
    policy = LogpsModel("policy", model_args.model_name_or_path, model_args.model_revision, tokenizer)
    reference = LogpsModel("reference", script_args.ref_model_name_or_path, reference_revision(
        model_args, script_args.ref_model_name_or_path, script_args.ref_model_revision), tokenizer)
    caches = {"policy": work / "policy_logps.parquet", "reference": work / "reference_logps.parquet"}
    dependencies = {spec.label: dependencies_of(spec, model_args, training_args) for spec in (policy, reference)}
    if script_args.precompute_file_path:
        stored = read_ref_logps_file(script_args.precompute_file_path).meta.get("dependencies", {})
        matches = {label: dependency_mismatch(stored, deps) for label, deps in dependencies.items()}
        usable = [label for label, mismatch in matches.items() if mismatch is None]
        if not usable:
            raise ValueError(f"precomputed file {script_args.precompute_file_path} matches neither model: policy: "
                             f"{matches['policy']}; reference: {matches['reference']}")
        caches[usable[0]] = Path(script_args.precompute_file_path)
        logger.info("%s log-probs from %s", usable[0], script_args.precompute_file_path)
    logps = {spec.label: logps_of_rows(pair_logps(spec, [rows], caches[spec.label], model_args, training_args,
                                                  dependencies[spec.label]), keys)
             for spec in (policy, reference)}

    # 4. Rewards, weights, summary and plot
    results, dropped = reward_rows(list(rows), keys, logps["policy"], logps["reference"], training_args.beta)
    summary = reward_summary(results, training_args.beta, dropped)
    summary.update(policy=policy.name_or_path, reference=reference.name_or_path, data=data_counts,
                   weight_definition="sigmoid(rejected_reward - chosen_reward)")
    write_jsonl(out / LM_REWARD_FILE, results)
    write_text(out / "lm_reward_summary.json", json.dumps(summary, indent=2))
    if summary["pairs"]:
        plot_margins(results, out / "lm_reward_margins.png",
                     f"policy {Path(policy.name_or_path).name} vs reference {Path(reference.name_or_path).name} "
                     f"(beta {training_args.beta:g}, {summary['pairs']} pairs)")
    print(format_reward_summary(summary, f"implicit rewards: {policy.name_or_path} over {reference.name_or_path}"))
    print(f"per-pair rewards: {out / LM_REWARD_FILE}")
    return summary


if __name__ == "__main__":
    main()
