#!/usr/bin/env bash
# The benchmark matrix of docs/benchmarks.md on the lent H200, from the repository root, with the wheels of
# ../shared/tools/gpu-wheels.sh in .whl/. Stages (each may be run alone, in this order):
#   tune     for each model of $MODELS (default "llama qwen3"), twinkle-tune examples/hf_llama/model.py in each mode of
#            $TUNE_MODES (default "inference train compile train+compile"), each timed, with --patience ${PATIENCE:-4}:
#              profiles/matrix/<model>-inference.json       both input sets (long 4 x 2048, short 64 x 128)
#              profiles/matrix/<model>-train.json           the long set, --mode train
#              profiles/matrix/<model>-compile.json         both input sets, --mode compile
#              profiles/matrix/<model>-train+compile.json   the long set, --mode train+compile
#            $TRAIN_OBJECTIVE (e.g. both) adds --objective to the two train tunings, $EXHAUSTIVE=1 --exhaustive to
#            every tuning (an oracle where a set has at most 64 combinations); reports in reports/matrix/tune/
#   matrix   benchmarks/matrix.py with those profiles: ${ROUNDS:-3} interleaved rounds ($STACKS: a subset)
# Models: llama = TinyLlama-1.1B's shape (size tinyllama), qwen3 = Qwen3-0.6B's shape (size qwen3-0.6b).
# Everything is logged to reports/matrix/run.log; with $OUT set, the log and a tarball of profiles/matrix and
# reports/matrix are copied there.
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
STAGES=${*:-tune matrix}
MODELS=${MODELS:-llama qwen3}
TUNE_MODES=${TUNE_MODES:-inference train compile train+compile}
LOG=reports/matrix/run.log
mkdir -p profiles/matrix reports/matrix/tune
say() { echo "$@" | tee -a "$LOG"; }
size_of() {  # the examples/hf_llama size of a model name (the same map as benchmarks/matrix.py's)
  case $1 in llama) echo tinyllama ;; qwen3) echo qwen3-0.6b ;; *) echo "$1" ;; esac
}
tune() {  # tune MODEL NAME ARGS...: one tuning of MODEL's size, its wall time logged
  local size; size=$(size_of "$1"); local name=$2; shift 2
  local t0; t0=$(date +%s.%N)
  say "+ TWINKLE_EXAMPLE_SIZE=$size ${TWINKLE_EXAMPLE_SETS:+TWINKLE_EXAMPLE_SETS=$TWINKLE_EXAMPLE_SETS }twinkle-tune" \
    "examples/hf_llama/model.py --device cuda $* --profile profiles/matrix/$name.json" \
    "--report-dir reports/matrix/tune/$name"
  TWINKLE_EXAMPLE_SIZE=$size python3 -m autotune.cli examples/hf_llama/model.py --device cuda "$@" \
    ${EXHAUSTIVE:+--exhaustive} \
    --profile "profiles/matrix/$name.json" --report-dir "reports/matrix/tune/$name" 2>&1 | tee -a "$LOG"
  say "tuning wall time ($name): $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
  save
}
save() {  # with $OUT set: the log and a tarball of what is there so far (a run cut short keeps what it finished)
  if [ -n "${OUT:-}" ]; then cp "$LOG" "$OUT/matrix-run.log"; tar czf "$OUT/matrix.tgz" profiles/matrix reports/matrix; fi
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers as t; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    'triton', triton.__version__, 'transformers', t.__version__)"
} 2>&1 | tee -a "$LOG"

for stage in $STAGES; do
  say "=== stage $stage ($(date -u +%H:%M:%S)): models $MODELS"
  case $stage in
    tune)
      for model in $MODELS; do
        for mode in $TUNE_MODES; do
          case $mode in
            inference) tune "$model" "$model-inference" --patience "${PATIENCE:-4}" ;;
            compile) tune "$model" "$model-compile" --mode compile --patience "${PATIENCE:-4}" ;;
            train|train+compile)
              TWINKLE_EXAMPLE_SETS=long tune "$model" "$model-$mode" --mode "$mode" --patience "${PATIENCE:-4}" \
                ${TRAIN_OBJECTIVE:+--objective $TRAIN_OBJECTIVE} ;;
            *) say "unknown tuning mode $mode (use inference, train, compile, train+compile)" ;;
          esac
        done
      done
      ;;
    matrix)
      # shellcheck disable=SC2086  # MODELS and STACKS are word lists
      python3 benchmarks/matrix.py --device cuda --models $MODELS --profile-dir profiles/matrix \
        --rounds "${ROUNDS:-3}" --out reports/matrix ${STACKS:+--stacks $STACKS} 2>&1 | tee -a "$LOG"
      ;;
    *) say "unknown stage $stage (use tune, matrix)" ;;
  esac
done
say "=== done ($(date -u +%H:%M:%S))"
save
