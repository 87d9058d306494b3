#!/usr/bin/env bash
# The embedded-default demo (`make demo`): SFT, then DPO, of SmolLM2-135M-Instruct on the shipped samples, on CPU,
# then a greedy sample from each checkpoint, side by side. Each step can be rerun alone; extra arguments go to both
# training scripts (e.g. `bash recipes/smollm2-135m/demo.sh --max_steps=4`).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=models/smollm2-135m-instruct
[ -f "$BASE/config.json" ] || python scripts/prepare_model.py --output_dir "$BASE"

python scripts/run_sft.py recipes/smollm2-135m/sft/config_full.yaml --model_name_or_path="$BASE" "$@"
python scripts/run_dpo.py recipes/smollm2-135m/dpo/config_full.yaml \
    --model_name_or_path=outputs/smollm2-135m-sft-full "$@"
python scripts/sample_checkpoints.py \
    --model_paths "$BASE" outputs/smollm2-135m-sft-full outputs/smollm2-135m-dpo-full \
    --max_new_tokens 48 --column_width 34 --output_file outputs/demo_samples.json
