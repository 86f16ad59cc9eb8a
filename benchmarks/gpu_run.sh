#!/usr/bin/env bash
# One command for a fresh GPU machine that has torch and nvcc but no package
# registry: build the extension with all cores for the GPU present, run the
# whole test suite on CUDA, run the full benchmark, and leave results and logs
# in OUT_DIR (default $OUT, else benchmarks/results/_tmp).
#
#   bash benchmarks/gpu_run.sh [OUT_DIR]
#
# Baselines the machine lacks (e.g. Liger-Kernel, pure Python on Triton) can
# travel as wheels in the folder named by FASTACT_WHEELS; they are installed
# offline into a private site folder.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results/_tmp}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # the GPU present (e.g. "9.0" on H100), so one architecture is compiled
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
if [ -n "${FASTACT_WHEELS:-}" ] && ls "$FASTACT_WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastact-site "$FASTACT_WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/fastact-site"
fi

status=0
start=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1
} > "$OUT_DIR/env.txt" 2>&1

echo "== build (MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
"$PY" setup.py -q build_ext --inplace > "$OUT_DIR/build.log" 2>&1 || { tail -50 "$OUT_DIR/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

echo "== self-check"
"$PY" -m fastact > "$OUT_DIR/selfcheck.log" 2>&1 || status=1
tail -3 "$OUT_DIR/selfcheck.log"

echo "== tests"
"$PY" -m pytest tests -q -p no:cacheprovider > "$OUT_DIR/tests.log" 2>&1 || status=1
tail -5 "$OUT_DIR/tests.log"
echo "tests done after $(( $(date +%s) - start )) s"

echo "== benchmarks"
"$PY" benchmarks/run.py --full --out "$OUT_DIR/bench" > "$OUT_DIR/bench.log" 2>&1 || status=1
tail -40 "$OUT_DIR/bench.log"
echo "all done after $(( $(date +%s) - start )) s (status $status)"
exit $status
