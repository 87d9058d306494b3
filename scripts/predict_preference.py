"""How often a reward model agrees with a preference set's chosen/rejected labels (LION's predict_preference).

    python scripts/predict_preference.py recipes/starling-rm-7b-alpha/predict_preference/config_ultrafeedback.yaml
    python scripts/predict_preference.py --model_name_or_path llm-blender/PairRM-hf \
        --dataset_name HuggingFaceH4/ultrafeedback_binarized --dataset_split test_prefs --num_samples 500 \
        --output_dir data/analysis/reward_preds/ultrafbk_500_pairrm

model_name_or_path: any AutoModelForSequenceClassification reward model (a hub id or a folder; scores read after its
chat template, num_labels 1 or 2), or llm-blender's PairRM (detected from its config; or say model_type). A
checkpoint whose score head did not load is an error before anything is scored. PairRM compares each pair in both
orders and averages P(chosen better), so its position bias cancels (pairrm_both_orders=false: chosen shown first
only, as its model card does). A pair is correct only when reward(chosen) > reward(rejected) strictly (PairRM:
P(chosen better) > 0.5): ties count as wrong, as in LION's compute_rm_reward.

Rows: the first num_samples rows of dataset_split (-1: all; shuffle=true draws them seeded, as LION did), through the
mixer (hub id, file or folder; any preference format it knows). Output in output_dir: reward_predictions.jsonl (one
row per pair: pair_id, prompt_id, source, reward_chosen, reward_rejected, margin, correct, tie, score_chosen,
score_rejected, score_diff, bucket), summary.json (accuracy with its Wilson 95% interval, ties, per source and per
bucket of score_chosen - score_rejected), accuracy.png, run_args.yaml; the table is printed. Resumable: rewards are
appended to output_dir/work/scored_pairs.jsonl (keyed by pair_id) as they are computed; a rerun scores only what is
missing, and loads no model when nothing is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from chatalign.configs import ChatalignParser

logger = logging.getLogger("predict_preference")


@dataclass
class PredictPreferenceArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model or PairRM: hub id or folder."})
    model_type: str = field(default="auto", metadata={"help": "auto (PairRM when its config says so), reward_model or "
                                                              "pairrm."})
    dataset_name: str = field(default="HuggingFaceH4/ultrafeedback_binarized",
                              metadata={"help": "Preference set: hub id, file or folder."})
    dataset_split: str = field(default="test_prefs", metadata={"help": "Split to score."})
    dataset_format: str | None = field(default=None, metadata={"help": "Adapter name (default: detected)."})
    num_samples: int = field(default=500, metadata={"help": "Rows to score, from the start of the split; -1: all."})
    shuffle: bool = field(default=False, metadata={"help": "Shuffle the split (seeded) before taking num_samples."})
    seed: int = field(default=42, metadata={"help": "Seed of the shuffle."})
    skip_invalid: bool = field(default=True, metadata={"help": "Skip malformed rows (counted)."})
    batch_size: int = field(default=8, metadata={"help": "Texts (PairRM: comparisons) per forward pass."})
    max_length: int = field(default=2048, metadata={"help": "Token limit of a reward model's input (the start is cut)."})
    pairrm_both_orders: bool = field(default=True, metadata={"help": "PairRM: average both orders (position bias "
                                                                     "cancels); false: chosen shown first only."})
    score_bucket_width: float = field(default=1.0, metadata={"help": "Width of the score-difference buckets."})
    score_bucket_max: float = field(default=5.0, metadata={"help": "Differences from here on share one bucket."})
    output_dir: str | None = field(default=None, metadata={"help": "Folder for the predictions, summary and plot."})

    def __post_init__(self):
        missing = [k for k in ("model_name_or_path", "output_dir") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing required key(s): {', '.join(missing)}")
        if self.model_type not in ("auto", "reward_model", "pairrm"):
            raise ValueError(f"model_type must be auto, reward_model or pairrm, got {self.model_type!r}")
        if self.num_samples == 0 or self.num_samples < -1:
            raise ValueError(f"num_samples must be -1 (all) or a positive count, got {self.num_samples}")
        if self.batch_size < 1 or self.max_length < 1 or self.score_bucket_width <= 0 or self.score_bucket_max <= 0:
            raise ValueError("batch_size, max_length, score_bucket_width and score_bucket_max must be positive")


def make_parser() -> ChatalignParser:
    return ChatalignParser([PredictPreferenceArguments])


def main(argv=None, scorer=None):
    """`scorer`: a ready chatalign judge (pointwise score_batch or pairwise compare_batch) instead of
    model_name_or_path's checkpoint (tests, Python callers)."""
    (args,) = make_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from chatalign.analysis.preference_prediction import (
        accuracy_summary,
        build_scorer,
        format_accuracy_table,
        load_scorer_weights,
        plot_accuracy,
        prediction_rows,
        score_pairs,
        scorer_kind,
    )
    from chatalign.configs import write_run_args
    from chatalign.data.mixer import load_split_rows
    from chatalign.store import ResumableJsonl, write_jsonl, write_text

    # 1. The rows (a dataset without chosen/rejected is an error naming it, before any model is touched)
    rows, skipped = load_split_rows(args.dataset_name, args.dataset_split, "preference", args.num_samples, args.skip_invalid,
                           args.dataset_format, shuffle=args.shuffle, seed=args.seed)

    # 2. The scorer (nothing loaded yet) and the run's identity, which the resume file must match
    model = args.model_name_or_path if scorer is None else scorer.name
    if scorer is None:
        scorer, kind = build_scorer(args.model_name_or_path, args.model_type, args.batch_size, args.max_length)
    else:
        kind = scorer_kind(scorer, args.model_type)
    orders = "both" if args.pairrm_both_orders else "chosen_first"
    scorer_name = scorer.name + (f"|orders:{orders}" if kind == "pairrm" else "")

    # 3. Score what the resume file lacks; the checkpoint is loaded (its head checked) only when there is work
    out = Path(args.output_dir)
    store = ResumableJsonl(out / "work" / "scored_pairs.jsonl", key="pair_id")
    computed = score_pairs(rows, scorer, kind, store, scorer_name, both_orders=args.pairrm_both_orders,
                           before_scoring=lambda: load_scorer_weights(scorer))
    logger.info("%d pairs scored now, %d from earlier runs (%s)", computed, len(rows) - computed, scorer_name)

    # 4. Per-row predictions, accuracy overall / per source / per score-difference bucket, table, plot
    width, top = args.score_bucket_width, args.score_bucket_max
    predictions = prediction_rows(rows, store, kind, width, top)
    stats = accuracy_summary(predictions, width, top)
    truncated = getattr(getattr(scorer, "classifier", None), "truncated", 0)
    summary = {"model": model, "model_type": kind, "scorer": scorer_name,
               "pairrm_both_orders": args.pairrm_both_orders if kind == "pairrm" else None,
               "data": {"dataset_name": args.dataset_name, "dataset_split": args.dataset_split,
                        "num_samples": args.num_samples, "shuffle": args.shuffle, "seed": args.seed,
                        "skipped_invalid": skipped},
               "rows": len(rows), "unscored": len(rows) - len(predictions), **stats,
               "computed_this_run": computed, "truncated_inputs_this_run": truncated,
               "files": {"predictions": "reward_predictions.jsonl", "plot": "accuracy.png"}}
    write_jsonl(out / "reward_predictions.jsonl", predictions)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    title = f"{model} on {args.dataset_name} [{args.dataset_split}]: {stats['n']} pairs"
    plot_accuracy(stats, out / "accuracy.png", title)
    write_run_args(out, (args,), script="predict_preference.py")
    print(format_accuracy_table(stats, title + " (ties count as wrong)"))
    print(f"per-pair rewards: {out / 'reward_predictions.jsonl'}; summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
