# Sourced by the gpu_*.sh drivers, from the repository root on the lent GPU machine: installs the wheels carried in
# .whl/ (../shared/tools/gpu-wheels.sh) into /tmp/site, puts them and this checkout first on the Python path, and
# keeps Python's output unbuffered and the Hub offline.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
fi
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
