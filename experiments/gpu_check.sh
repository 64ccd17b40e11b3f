#!/usr/bin/env bash
# The GPU check, in one unattended run of at most 7.5 minutes on one H100/H200 (python start-up and compiles
# included; the machine's own start is not): the environment, the tests that need a GPU to mean anything, then our
# bfloat16 train step (float32 master weights) beside timm's at batch 128, 299x299: images/s and MFU.
#   bash experiments/gpu_check.sh [OUT_DIR]          (OUT_DIR defaults to $OUT, else .)
# Writes OUT_DIR/gpu_check.log (everything printed), pytest_*.log (four), gpu_bench.jsonl (the benchmark's rows)
# and gpu_report.md (`python -m inception_jax.bench --report` of them): 7 files. Exits 1 if a step failed, timed
# out or was skipped for want of time; the steps after a failed one still run.
#
# Time: every step runs under `timeout`, its own limit or what is left of GPU_CHECK_BUDGET_S (default 420 s, with
# 30 s kept for the report), so a hang or a slow compile cannot run past the budget. Expected on an H100/H200
# (estimates: nothing of this project has run on a GPU yet):
#   environment                                   ~15 s
#   tests, four processes at once (they time nothing; 6 + 3 + 3 + 1 tests, 20 small or inference compiles)
#                                                 ~100-150 s (limit 180)
#   v4: ours --ops reference (train-step compile 1-2 min), then timm eager fp32, channels_last fp32 and AMP
#       (bfloat16 autocast, channels_last; ~15 s each, mostly process start-up)      ~150 s (limit 200)
#   IR-v2: the same                                ~190 s (limit 230)
#   v4, IR-v2: ours --ops cpu (another compile each), only while the budget lasts   ~120 s, ~160 s
#   report                                         ~3 s (limit 30)
# The whole of `--ops reference,cpu` for both models would need ~11-12 min, so the CPU kernels' rows come last and
# are skipped (the script then exits 1) when the budget is spent. The benchmark cannot time timm's AMP alone:
# --vs-timm always times eager fp32 and channels_last fp32 too (~30 s a model).
#
# MFU uses DEVICE_PEAK_FLOPS (H100 SXM, H200: 989 TFLOP/s dense bf16); EXTRA="--peak-tflops N" for other cards.
# Packages the image lacks (ml_collections for the train step, say) install from wheels in .whl/ when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
budget_s="${GPU_CHECK_BUDGET_S:-420}"
reserve_s=30  # for the report
# A compile cache outside OUT_DIR (it holds many files): a rerun on the same machine skips the compiles.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/inception_jax_gpu_cache}"
failed=()

# limit MAX: prints MAX or what is left of the budget (less the report's reserve), whichever is less.
limit() {
  local left=$((budget_s - reserve_s - SECONDS))
  echo $((left < $1 ? left : $1))
}

# step NAME MAX MIN COMMAND...: COMMAND under a timeout of `limit MAX`, skipped when that is under MIN seconds.
step() {
  local name=$1 min=$3 seconds
  seconds=$(limit "$2")
  shift 3
  if ((seconds < min)); then
    echo "== $name: skipped, ${seconds}s of the budget left"
    failed+=("$name (skipped)")
    return 0
  fi
  echo "== $name (timeout ${seconds}s, at ${SECONDS}s): $*"
  local start=$SECONDS
  if timeout --kill-after=10 "$seconds" "$@"; then
    echo "== $name: ok in $((SECONDS - start))s"
  else
    echo "== $name: FAILED with exit code $? after $((SECONDS - start))s (124: timed out)"
    failed+=("$name")
  fi
}

echo "== environment"
timeout 30 nvidia-smi || echo "nvidia-smi failed"
if compgen -G ".whl/*.whl" >/dev/null; then
  timeout 60 "$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
timeout 60 "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || failed+=("jax on the GPU")
# What the steps import; a missing one fails its steps, not the ones before them.
timeout 60 "$PY" -c "import flax, optax, orbax.checkpoint, ml_collections, timm, torch, pytest
print('flax', flax.__version__, 'torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" ||
  failed+=("imports")

echo "== tests, in four processes at once (pytest applies only its last -k to every file it is given)"
test_s=$(limit 180)
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the processes share the GPU
names=(models weights_reference weights_cpu training)
pids=()
timeout --kill-after=10 "$test_s" "$PY" -m pytest -q -x --all -p no:cacheprovider --durations=5 tests/test_models.py -k "cpu_kernels_compute or bfloat16" >"$out/pytest_models.log" 2>&1 &
pids+=($!)
timeout --kill-after=10 "$test_s" "$PY" -m pytest -q -x --all -p no:cacheprovider --durations=5 tests/test_weights.py -k "eval_logits and 107 and reference" >"$out/pytest_weights_reference.log" 2>&1 &
pids+=($!)
timeout --kill-after=10 "$test_s" "$PY" -m pytest -q -x --all -p no:cacheprovider --durations=5 tests/test_weights.py -k "eval_logits and 107 and cpu" >"$out/pytest_weights_cpu.log" 2>&1 &
pids+=($!)
timeout --kill-after=10 "$test_s" "$PY" -m pytest -q -x --all -p no:cacheprovider --durations=5 tests/test_training.py -k "bfloat16_compute_keeps_float32_master_weights" >"$out/pytest_training.log" 2>&1 &
pids+=($!)
for i in "${!names[@]}"; do
  if wait "${pids[$i]}"; then
    status=ok
  else
    status="FAILED with exit code $? (124: timed out)"
    failed+=("pytest ${names[$i]}")
  fi
  echo "-- pytest ${names[$i]}: $status"
  tail -n 25 "$out/pytest_${names[$i]}.log"
done
unset XLA_PYTHON_CLIENT_PREALLOCATE
echo "== tests done at ${SECONDS}s"

# The benchmark: ours with the reference ops and timm per model first, then ours with the CPU kernels while time
# lasts. Each measurement is its own process; rows are appended as they finish, so a step cut short keeps its
# earlier rows.
json="$out/gpu_bench.jsonl"
step "bench inception_v4" 200 120 \
  "$PY" -m inception_jax.bench --model inception_v4 --mode train --batch 128 --image-size 299 --dtype bfloat16 \
  --ops reference --vs-timm --timm-amp --warmup 3 --repeats 10 --json "$json" ${EXTRA:-}
step "bench inception_resnet_v2" 230 120 \
  "$PY" -m inception_jax.bench --model inception_resnet_v2 --mode train --batch 128 --image-size 299 \
  --dtype bfloat16 --ops reference --vs-timm --timm-amp --warmup 3 --repeats 10 --json "$json" ${EXTRA:-}
step "bench inception_v4 --ops cpu" 160 100 \
  "$PY" -m inception_jax.bench --model inception_v4 --mode train --batch 128 --image-size 299 --dtype bfloat16 \
  --ops cpu --warmup 3 --repeats 10 --json "$json" ${EXTRA:-}
step "bench inception_resnet_v2 --ops cpu" 180 120 \
  "$PY" -m inception_jax.bench --model inception_resnet_v2 --mode train --batch 128 --image-size 299 \
  --dtype bfloat16 --ops cpu --warmup 3 --repeats 10 --json "$json" ${EXTRA:-}

echo "== report at ${SECONDS}s"
if [[ -s "$json" ]]; then
  timeout 30 "$PY" -m inception_jax.bench --report "$json" >"$out/gpu_report.md" || failed+=("report")
  cat "$out/gpu_report.md"
else
  echo "no benchmark rows in $json"
  failed+=("report (no rows)")
fi

echo "== done in ${SECONDS}s"
if ((${#failed[@]})); then
  printf '== not ok: %s\n' "${failed[@]}"
  exit 1
fi
