#!/usr/bin/env bash
# The GPU evidence of docs/benchmarks.md ("Llama stacks"): run on the lent H100 from the repository root, with the
# wheels of ../shared/tools/gpu-wheels.sh in .whl/. Stages (each may be run alone, in this order):
#   tests    the pools' and Triton kernels' GPU tests, the roofline micro-benchmark, the compile check
#   tune     twinkle-tune the TinyLlama-shaped Llama (inference; train with --objective both), timed, with
#            --patience ${PATIENCE:-4} (the seeds and the walk's moves always run; patience ends the sampling)
#   stacks   eager / all-Liger / all-torch-pool / tuned / torch.compile stacks, one process each ($STACKS: a subset)
#   repeat   two more tunings of each mode, and whether the per-target winners repeat (REPEAT_TRAIN_TRIALS=0
#            skips the end-to-end search in the train repeats, which does not change per-target picks)
# Everything lands in profiles/ and reports/; with $OUT set, logs and a tarball of both are copied there.
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
export TWINKLE_EXAMPLE_SIZE=tinyllama
STAGES=${*:-tests tune stacks}
LOG=${OUT:-reports}/gpu_llama_stacks.log
mkdir -p reports profiles "$(dirname "$LOG")"
say() { echo "$@" | tee -a "$LOG"; }
tune() {  # tune NAME ARGS...: one tuning, its wall time logged
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  say "+ twinkle-tune examples/hf_llama/model.py --device cuda $* --profile profiles/$name.json --report-dir reports/$name"
  python3 -m autotune.cli examples/hf_llama/model.py --device cuda "$@" --profile "profiles/$name.json" \
    --report-dir "reports/$name" 2>&1 | tee -a "$LOG"
  say "tuning wall time ($name): $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$LOG"

for stage in $STAGES; do
  say "=== stage $stage ($(date -u +%H:%M:%S))"
  case $stage in
    tests)
      python3 -m pytest -q -p no:cacheprovider -rs tests/pools 2>&1 | tee -a "$LOG" | tail -25
      python3 benchmarks/rmsnorm_bandwidth.py --json reports/rmsnorm_bandwidth.json 2>&1 | tee -a "$LOG"
      [ -f benchmarks/compile_check.py ] && python3 benchmarks/compile_check.py 2>&1 | tail -20 | tee -a "$LOG"
      ;;
    tune)
      tune hf_tinyllama-cuda --patience "${PATIENCE:-4}"   # both input sets: long (4 x 2048) and short (64 x 128)
      TWINKLE_EXAMPLE_SETS=long tune hf_tinyllama-cuda-train --mode train --objective both --patience "${PATIENCE:-4}"
      ;;
    stacks)
      python3 benchmarks/llama_stacks.py --profile-inference profiles/hf_tinyllama-cuda.json \
        --profile-train profiles/hf_tinyllama-cuda-train.json --out reports/llama_stacks ${STACKS:+--stacks $STACKS} \
        2>&1 | tee -a "$LOG"
      ;;
    repeat)
      for i in 2 3; do
        tune "repeat/hf_tinyllama-cuda-$i" --patience "${PATIENCE:-4}"
        TWINKLE_EXAMPLE_SETS=long tune "repeat/hf_tinyllama-cuda-train-$i" --mode train --objective both --trials "${REPEAT_TRAIN_TRIALS:-20}" \
          --patience "${PATIENCE:-4}"
      done
      for m in cuda cuda-train; do
        python3 benchmarks/tuning_repeatability.py "profiles/hf_tinyllama-$m.json" \
          "profiles/repeat/hf_tinyllama-$m-2.json" "profiles/repeat/hf_tinyllama-$m-3.json" \
          --json "reports/repeatability-$m.json" 2>&1 | tee -a "$LOG"
      done
      ;;
  esac
done
say "=== done ($(date -u +%H:%M:%S))"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" profiles reports; fi
