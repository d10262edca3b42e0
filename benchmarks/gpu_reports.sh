#!/usr/bin/env bash
# The GPU runs behind reports/*-cuda*: run on the lent H100 from the repository root, with the wheels that
# ../shared/tools/gpu-wheels.sh downloads into .whl/ (kernels, optuna, liger-kernel, ...). Writes profiles/ and
# reports/ and, when $OUT is set, copies them and the logs there as one tarball.
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
LOG=${OUT:-.}/gpu_reports.log
tune() { echo "+ twinkle-tune $*" | tee -a "$LOG"; python3 -m autotune.cli "$@" 2>&1 | tee -a "$LOG"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$LOG"
tune examples/tiny_llama/model.py --device cuda --profile profiles/tiny_llama-cuda.json \
  --report-dir reports/tiny_llama-cuda
TWINKLE_EXAMPLE_SIZE=1b tune examples/hf_llama/model.py --device cuda --profile profiles/hf_llama_1b-cuda.json \
  --report-dir reports/hf_llama_1b-cuda
TWINKLE_EXAMPLE_SIZE=1b tune examples/hf_llama/model.py --device cuda --mode train \
  --profile profiles/hf_llama_1b-cuda-train.json --report-dir reports/hf_llama_1b-cuda-train
tune examples/tiny_llama/model.py --device cuda --objective both --trials 12 \
  --profile profiles/tiny_llama-cuda-both.json --report-dir reports/tiny_llama-cuda-both
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" profiles reports; fi
