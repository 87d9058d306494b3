#!/usr/bin/env bash
# Self-play nnPU-KTO (SPIN-style iterations) of the embedded default, SmolLM2-135M-Instruct, on CPU with tiny settings:
# reformat the alpaca demo once, then per iteration n = 0..ITERS-1: the current model (the base for n = 0, else
# iteration n-1's output) answers NUM_PROMPTS prompts -> generated/smollm2-135m/iter<n>, converted to KTO rows (real =
# label True, generated = label False), and nnPU-KTO trains it (recipes/smollm2-135m/kto/config_selfplay.yaml) into
# outputs/smollm2-135m-selfplay-iter<n>. Extra arguments go to scripts/run_kto.py.
#   bash recipes/smollm2-135m/selfplay/run_selfplay.sh [--max_steps=4]
# Environment: BASE (iteration 0's model), OUT_ROOT (holds generated/ and outputs/; default: the repo), ITERS (2),
# NUM_PROMPTS (16), MAX_TOKENS (32), DATA (an SFT source). A rerun resumes: finished steps are skipped (reformat output,
# generated rows and trained iterations that exist are kept; delete them to redo a step).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BASE=${BASE:-models/smollm2-135m-instruct}
OUT_ROOT=${OUT_ROOT:-.}
ITERS=${ITERS:-2}
NUM_PROMPTS=${NUM_PROMPTS:-16}
MAX_TOKENS=${MAX_TOKENS:-32}
DATA=${DATA:-data/llama_factory_demo/alpaca_en_demo.json}
GEN="$OUT_ROOT/generated/smollm2-135m"
[ -f "$BASE/config.json" ] || python scripts/prepare_model.py --output_dir "$BASE"

[ -f "$GEN/synthetic/train.parquet" ] || python scripts/reformat.py --data="$DATA" --output_dir="$GEN/synthetic"

model="$BASE"
for ((n = 0; n < ITERS; n++)); do
    echo "=== self-play iteration $n: $model answers $NUM_PROMPTS prompts -> $GEN/iter$n"
    # Fraction 0 of length NUM_PROMPTS: the first NUM_PROMPTS prompts of the seeded shuffle, the same every iteration.
    python scripts/generate.py --model="$model" --input_dir="$GEN/synthetic" --output_dir="$GEN/iter$n" \
        --split=train --data_frac=0 --frac_len="$NUM_PROMPTS" --max_tokens="$MAX_TOKENS" --backend=transformers
    python scripts/convert_data.py --input_dir="$GEN/iter$n" --split=train --format=kto
    out="$OUT_ROOT/outputs/smollm2-135m-selfplay-iter$n"
    if [ -f "$out/train_results.json" ]; then
        echo "=== $out is trained already: kept"
    else
        python scripts/run_kto.py recipes/smollm2-135m/kto/config_selfplay.yaml --model_name_or_path="$model" \
            --dataset_mixer="{'$GEN/iter$n/kto': 1.0}" --output_dir="$out" "$@"
    fi
    model="$out"
done
echo "=== self-play done: $model"
