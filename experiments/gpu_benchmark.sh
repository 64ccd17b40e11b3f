#!/usr/bin/env bash
# Train-step speed on one GPU (H100: fits in 8 minutes with start-up): ours in bfloat16 (float32 master weights)
# beside timm eager fp32, channels_last and AMP (bfloat16 autocast, channels_last), same batch and size, same run.
#   bash experiments/gpu_benchmark.sh [OUT_DIR]
# Prints a table per model and appends JSON lines to OUT_DIR/gpu_benchmark.jsonl. MFU uses the H100's dense
# bfloat16 peak (989 TFLOP/s) unless --peak-tflops is given in EXTRA (env).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"
for model in inception_v4 inception_resnet_v2; do
  python -m inception_jax.bench --model "$model" --mode train --batch 128 --image-size 299 --dtype bfloat16 \
    --vs-timm --timm-amp --warmup 3 --repeats 10 --json "$out/gpu_benchmark.jsonl" ${EXTRA:-}
done
# Optional (not in the 8-minute budget): the largest train batch that fits the GPU, without and with per-block
# remat, found from XLA's compile-time memory plan (several compiles per model).
if [[ "${MAX_BATCH:-0}" == "1" ]]; then
  for model in inception_v4 inception_resnet_v2; do
    python -m inception_jax.bench --model "$model" --image-size 299 --dtype bfloat16 --max-batch --batch 128 \
      --batch-step 32 --json "$out/gpu_max_batch.jsonl"
  done
fi
