#!/usr/bin/env bash
# The multi-GPU run of docs/benchmarks.md: FSDP2 over NCCL, original vs profile-applied TinyLlama-shaped Llama,
# tuning on rank 0. Run from the repository root on a machine with 2+ GPUs, with the wheels of
# ../shared/tools/gpu-wheels.sh in .whl/. NVLink multicast stays off (the host's GPUs are shared).
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NPROC=${NPROC:-2}
TRIALS=${TRIALS:-8}
mkdir -p reports/fsdp profiles
LOG=reports/fsdp/fsdp.log
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$LOG"
python3 -m torch.distributed.run --nproc-per-node "$NPROC" benchmarks/fsdp_train.py --model hf-tinyllama \
  --backend nccl --dtype bf16 --tune --trials "$TRIALS" --profile profiles/hf_tinyllama-fsdp.json --steps 20 \
  --out reports/fsdp/result.json 2>&1 | grep -v "━" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" reports/fsdp profiles/hf_tinyllama-fsdp.json; cp "$LOG" "$OUT/"; fi
