#!/usr/bin/env bash
# The GPU check, for the moments a GPU is at hand (README "GPU check"): every part under its
# own time limit, 450 s in all (under 8 minutes on one H200), JSON and logs under OUT.
#
#   bash launch/gpu_check.sh OUT [SHARED_DATA]
#
# Parts: the device; cuDNN fused attention against XLA's at every attention site (bf16, full
# size, max differences); the full model's bf16 train step at batch 32 (step time, MFU from
# benchmark/flops.py, memory_stats() peak) with XLA's autotune results dumped for later
# deviceless compiles; the deviceless estimate of the same step for the same target (h200),
# compiled on the host's CPU; the MoE layer per dispatch (blocks, ragged_dot, slots, ...),
# and again with XLA's ragged-dot fusion; the input pipeline with 16 Grain workers at 224 px
# (needs SHARED_DATA, the folder with chestxray14/ PNGs and biogpt_tokenizer/).
#
# Packages: the GPU machines have jax, flax, optax and orbax but not grain,
# tensorflow-datasets, array_record, ml_collections, tensorboardX (and a few of their
# dependencies). They travel as wheels: `bash launch/gpu_wheels.sh` (where pip reaches PyPI)
# writes them to .whl/ (11 MB), which goes with the working tree (the device tool's `carry`);
# this script installs them from there (pip --no-index --target /tmp/site).
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: bash launch/gpu_check.sh OUT [SHARED_DATA]}" && cd "$1" && pwd)
SHARED=${2:-}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/status.txt"

part() {   # part NAME SECONDS COMMAND...: run under a time limit, log, record the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/status.txt"
}

if [ -d .whl ]; then
  part wheels 30 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
part device 15 python3 -c "import jax; d = jax.devices(); print(jax.__version__, len(d), d[0].device_kind)"
part attention 50 python3 -m medvlmoe_jax.benchmark.gpu_check attention --json "$OUT/attention.json"
part train_full 130 env XLA_FLAGS="--xla_gpu_dump_autotune_results_to=$OUT/autotune_results.textproto" \
    python3 launch/benchmark.py train --sizes full --full_batch 32 --dtype bfloat16 --rounds 3 \
    --json "$OUT/train_full.json"
part compile_estimate 100 env JAX_PLATFORMS=cpu python3 launch/benchmark.py compile \
    --config configs/chestxray14.py --target h200 --devices 1 --json "$OUT/compile_h200.json"
part moe 40 python3 launch/benchmark.py moe --dtype bfloat16 --rounds 5 --json "$OUT/moe.json"
part moe_ragged_dot_fusion 40 env XLA_FLAGS="--xla_gpu_experimental_use_ragged_dot_fusion=true" \
    python3 launch/benchmark.py moe --dtype bfloat16 --rounds 5 --json "$OUT/moe_ragged_fusion.json"
if [ -n "$SHARED" ]; then
  part data 45 python3 launch/benchmark.py data --workers 0,16 --shared_data "$SHARED" \
      --json "$OUT/data.json"
else
  echo "data not run: no SHARED_DATA folder given" | tee -a "$OUT/status.txt"
fi
echo "wrote $OUT"
