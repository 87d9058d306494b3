#!/usr/bin/env bash
# The embedded-default demo (`make demo`): SFT, then DPO, of SmolLM2-135M-Instruct on the shipped samples, on CPU,
# then a greedy sample from each checkpoint, side by side. Extra arguments go to both training scripts
# (e.g. `bash recipes/smollm2-135m/demo.sh --max_steps=4`); OUT_DIR (default outputs) holds the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-models/smollm2-135m-instruct}
OUT_DIR=${OUT_DIR:-outputs}
[ -f "$BASE/prepare_info.json" ] || python scripts/prepare_model.py --output_dir "$BASE"

python scripts/run_sft.py recipes/smollm2-135m/sft/config_full.yaml \
    --model_name_or_path="$BASE" --output_dir="$OUT_DIR/smollm2-135m-sft-full" "$@"
python scripts/run_dpo.py recipes/smollm2-135m/dpo/config_full.yaml \
    --model_name_or_path="$OUT_DIR/smollm2-135m-sft-full" --output_dir="$OUT_DIR/smollm2-135m-dpo-full" "$@"
python scripts/sample_checkpoints.py \
    --model_paths "$BASE" "$OUT_DIR/smollm2-135m-sft-full" "$OUT_DIR/smollm2-135m-dpo-full" \
    --max_new_tokens 48 --column_width 34 --output_file "$OUT_DIR/demo_samples.json"
