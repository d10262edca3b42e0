#!/usr/bin/env bash
# Dispatch overhead on a GPU (benchmarks/dispatch_overhead.py --device cuda): per-call micro figures, and whole-step
# inference and train timings of the TinyLlama-shaped transformers Llama with and without per-call dispatch.
# Run from the repository root on the GPU machine; python3 there finds its packages through $PYTHONPATH. Wheels in
# .whl/ (../shared/tools/gpu-wheels.sh: kernels, liger-kernel, ...) are installed first when present, so that the
# triton and liger pools load; without them the benchmark falls back to the pools that load and says which.
# Writes reports/dispatch/cuda.json and reports/dispatch/cuda.log; with $OUT set, copies both there.
# Extra arguments go to the benchmark (e.g. --rounds 30 --steps 5, or --size tiny for a quick check).
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
DIR=reports/dispatch
LOG=$DIR/cuda.log
mkdir -p "$DIR"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__)"
  python3 -c "import triton; print('triton', triton.__version__)" || true
} 2>&1 | tee "$LOG"
python3 benchmarks/dispatch_overhead.py --device cuda --size tinyllama --breakdown --json "$DIR/cuda.json" "$@" 2>&1 \
  | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "exit status $rc" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then cp "$LOG" "$OUT/"; [ -f "$DIR/cuda.json" ] && cp "$DIR/cuda.json" "$OUT/"; fi
exit "$rc"
