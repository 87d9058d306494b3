#!/usr/bin/env bash
# Self-play nnPU-KTO (SPIN-style iterations) of Mistral-7B on one 8-GPU node: UltraChat-200k prompts, vLLM generation
# (tensor parallel over WORLD_SIZE GPUs), ZeRO-3 training with recipes/mistral-7b/kto/config_selfplay_iter0.yaml.
# Reformat once (first exchange of each train_sft/test_sft conversation, MAX_SAMPLES prompts per split), then per
# iteration n = 0..ITERS-1: the current model (BASE for n = 0, else iteration n-1's output) answers the train prompts
# -> generated/mistral-7b/iter<n>, converted to KTO rows (real = label True, generated = label False), and nnPU-KTO
# trains it (the reference is the model it starts from) into outputs/mistral-7b-selfplay-iter<n>.
# Extra arguments go to scripts/run_kto.py.
#   bash recipes/mistral-7b/selfplay/run_selfplay.sh [--learning_rate=1e-7]
# Environment: BASE (iteration 0's model; SPIN starts from an SFT model such as alignment-handbook/zephyr-7b-sft-full
# or recipes/zephyr-7b-beta/sft's output, since the raw base model has no chat behaviour), OUT_ROOT (holds generated/
# and outputs/; default: the repo), ITERS (4), MAX_SAMPLES (50000, SPIN's prompt count), MAX_TOKENS (256),
# WORLD_SIZE (8), NUM_GPUS (8).
# Several machines: give each one fraction, e.g. FRAC_LEN=25000 DATA_FRACS=1 on machine 1, and copy the
# generated/mistral-7b/iter<n>/train_frac<K>.jsonl files together before converting; a rerun of this script
# generates only what is missing (finished fractions, reformat output and trained iterations are kept).
set -euo pipefail
cd "$(dirname "$0")/../../.."
BASE=${BASE:-alignment-handbook/zephyr-7b-sft-full}
OUT_ROOT=${OUT_ROOT:-.}
ITERS=${ITERS:-4}
MAX_SAMPLES=${MAX_SAMPLES:-50000}
MAX_TOKENS=${MAX_TOKENS:-256}
WORLD_SIZE=${WORLD_SIZE:-8}
NUM_GPUS=${NUM_GPUS:-8}
FRAC_LEN=${FRAC_LEN:-0}
DATA_FRACS=${DATA_FRACS:-0}
RECIPE=recipes/mistral-7b/kto/config_selfplay_iter0.yaml
GEN="$OUT_ROOT/generated/mistral-7b"

[ -f "$GEN/synthetic/train.parquet" ] || python scripts/reformat.py --data=HuggingFaceH4/ultrachat_200k \
    --train_split=train_sft --test_split=test_sft --max_samples="$MAX_SAMPLES" --output_dir="$GEN/synthetic"

model="$BASE"
for ((n = 0; n < ITERS; n++)); do
    echo "=== self-play iteration $n: $model -> $GEN/iter$n"
    for frac in $DATA_FRACS; do
        # zephyr: the template the recipe trains with (the base checkpoint has none of its own)
        python scripts/generate.py --model="$model" --input_dir="$GEN/synthetic" --output_dir="$GEN/iter$n" \
            --split=train --data_frac="$frac" --frac_len="$FRAC_LEN" --max_tokens="$MAX_TOKENS" \
            --backend=vllm --world_size="$WORLD_SIZE" --gen_chat_template=zephyr
    done
    python scripts/convert_data.py --input_dir="$GEN/iter$n" --split=train --format=kto
    out="$OUT_ROOT/outputs/mistral-7b-selfplay-iter$n"
    if [ -f "$out/train_results.json" ]; then
        echo "=== $out is trained already: kept"
    else
        accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml --num_processes="$NUM_GPUS" \
            scripts/run_kto.py "$RECIPE" --model_name_or_path="$model" --dataset_mixer="{'$GEN/iter$n/kto': 1.0}" \
            --output_dir="$out" --hub_model_id="mistral-7b-selfplay-iter$n" "$@"
    fi
    model="$out"
done
echo "=== self-play done: $model"
