#!/usr/bin/env bash
# The embedded-default demo (`make demo`): SFT, then DPO, of SmolLM2-135M-Instruct on the shipped samples, on CPU,
# a greedy sample from each checkpoint side by side, then the base, SFT and DPO checkpoints scored on an MT-Bench
# subset and an AlpacaEval-style comparison (against the base's answers), judged by the embedded model itself with
# logprob scoring: a demo judge, so the table shows the loop working, not the checkpoints' quality. Extra arguments
# go to both training scripts (e.g. `bash recipes/smollm2-135m/demo.sh --max_steps=4`); OUT_DIR (default outputs)
# holds the checkpoints and the evaluation files; EVAL=0 stops after the samples.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-models/smollm2-135m-instruct}
OUT_DIR=${OUT_DIR:-outputs}
SFT="$OUT_DIR/smollm2-135m-sft-full"
DPO="$OUT_DIR/smollm2-135m-dpo-full"
[ -f "$BASE/prepare_info.json" ] || python scripts/prepare_model.py --output_dir "$BASE"

# 1. Training, and a sample from each checkpoint
python scripts/run_sft.py recipes/smollm2-135m/sft/config_full.yaml \
    --model_name_or_path="$BASE" --output_dir="$SFT" "$@"
python scripts/run_dpo.py recipes/smollm2-135m/dpo/config_full.yaml \
    --model_name_or_path="$SFT" --output_dir="$DPO" "$@"
python scripts/sample_checkpoints.py \
    --model_paths "$BASE" "$SFT" "$DPO" \
    --max_new_tokens 48 --column_width 34 --output_file "$OUT_DIR/demo_samples.json"
[ "${EVAL:-1}" = "0" ] && exit 0

# 2. Evaluation with the embedded model as the (demo) judge, scored in process by logprobs
EVAL_DIR="$OUT_DIR/demo_eval"
for MODEL in "$BASE" "$SFT" "$DPO"; do
    python scripts/run_mt_bench.py --model_path "$MODEL" --judge_model "$BASE" --judge_scoring logprobs \
        --categories writing roleplay stem humanities --per_category 1 --gen_max_tokens 64 --judge_max_tokens 32 \
        --backend transformers --bench_dir "$EVAL_DIR/mt_bench" \
        --result_save_path "$EVAL_DIR/results/$(basename "$MODEL")/mt_bench.json"
done
for MODEL in "$SFT" "$DPO"; do
    python scripts/run_alpaca_eval.py --model_path "$MODEL" --reference_model_path "$BASE" --judge_model "$BASE" \
        --eval_set_path data/demo_eval/alpaca_style_instructions.json --gen_temperature 0 --gen_max_tokens 64 \
        --backend transformers --output_dir "$EVAL_DIR/alpaca_eval" \
        --result_save_path "$EVAL_DIR/results/$(basename "$MODEL")/alpaca_eval.json"
done
python scripts/show_eval_summary.py --summary_files "$EVAL_DIR/results/$(basename "$BASE")"/*.json \
    "$EVAL_DIR/results/$(basename "$SFT")"/*.json "$EVAL_DIR/results/$(basename "$DPO")"/*.json \
    --title "make demo: SmolLM2-135M base -> SFT -> DPO" \
    --note "DEMO JUDGE: the embedded 135M model rates (logprob scoring); the scores show the pipeline, not quality" \
    --plot_path "$EVAL_DIR/summary.png"
echo "browse the answers and judgments: python scripts/browse_results.py --mt_bench_dirs $EVAL_DIR/mt_bench" \
     "--alpaca_eval_dirs $EVAL_DIR/alpaca_eval"
