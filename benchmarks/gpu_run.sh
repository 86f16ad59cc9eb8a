#!/usr/bin/env bash
# One command for a fresh GPU machine that has torch and nvcc but no package
# registry: build the extension with all cores for the GPU present, run the
# tests on CUDA, run the benchmark, and leave results and logs in OUT_DIR
# (default $OUT, else benchmarks/results/_tmp).
#
#   bash benchmarks/gpu_run.sh [--quick] [OUT_DIR]
#
# Full run (default): the whole test suite and the full benchmark.
# --quick (about ten minutes on one GPU): the build, the self-check, the
#   CUDA-marked tests (`pytest -m cuda`: every op's parity with torch on
#   CUDA, the no-host-sync and CUDA graph tests, CPU<->CUDA dropout and
#   rrelu streams), the CPU sync tests, and a short benchmark of the headline
#   ops against eager and torch.compile (benchmarks/run.py --quick).
#
# Without a CUDA device (torch.cuda.is_available() False, or FASTACT_NO_GPU=1)
# the GPU parts (the build for the GPU, the CUDA tests, the benchmark) are
# skipped with a message; what runs on the CPU still runs (the tests then
# report the CUDA cases as skipped), against the extension already built in
# python/fastact (built CPU-only first if there is none), and the script
# exits 0 unless a CPU part fails.
#
# Baselines the machine lacks (e.g. Liger-Kernel, pure Python on Triton) can
# travel as wheels in the folder named by FASTACT_WHEELS; they are installed
# offline into a private site folder. Missing optional packages (Liger,
# transformers, expecttest) only skip what needs them.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
OUT_ARG=""
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) OUT_ARG="$arg" ;;
  esac
done
OUT_DIR="${OUT_ARG:-${OUT:-benchmarks/results/_tmp}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${FASTACT_WHEELS:-}" ] && ls "$FASTACT_WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastact-site "$FASTACT_WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/fastact-site"
fi

GPU=1
if [ "${FASTACT_NO_GPU:-0}" != "0" ]; then
  GPU=0; why="FASTACT_NO_GPU=$FASTACT_NO_GPU"
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=0; why="torch.cuda.is_available() is False"
fi
if [ "$GPU" = 1 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # the GPU present (e.g. "9.0" on H100/H200), so one architecture is compiled
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi

status=0
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  nvcc --version 2>/dev/null | tail -1
  echo "mode: $([ "$QUICK" = 1 ] && echo quick || echo full), GPU: $GPU"
} > "$OUT_DIR/env.txt" 2>&1

if [ "$GPU" = 1 ]; then
  echo "== build (MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
  "$PY" setup.py -q build_ext --inplace > "$OUT_DIR/build.log" 2>&1 || { tail -50 "$OUT_DIR/build.log"; exit 1; }
  echo "built in $(elapsed)"
else
  echo "== no CUDA device ($why): skipping the GPU build, the CUDA tests' GPU work and the benchmark"
  if ! "$PY" -c "import fastact" > "$OUT_DIR/build.log" 2>&1; then
    echo "== build (CPU only, MAX_JOBS=$MAX_JOBS): no importable extension in python/fastact"
    FASTACT_CPU_ONLY=1 "$PY" setup.py -q build_ext --inplace >> "$OUT_DIR/build.log" 2>&1 \
      || { tail -50 "$OUT_DIR/build.log"; exit 1; }
    echo "built in $(elapsed)"
  fi
fi

echo "== self-check"
"$PY" -m fastact > "$OUT_DIR/selfcheck.log" 2>&1 || status=1
tail -3 "$OUT_DIR/selfcheck.log"

# pytest's exit status 5 is "no test selected": not a failure here
pytest_run() {
  local log="$1"; shift
  "$PY" -m pytest -q -p no:cacheprovider -rs "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1
  tail -5 "$log"
}

if [ "$QUICK" = 1 ]; then
  echo "== tests: no host sync (CPU and meta paths)"
  pytest_run "$OUT_DIR/tests-syncs.log" tests/test_syncs.py -m "not cuda"
  echo "== tests: every CUDA test (pytest -m cuda)"
  pytest_run "$OUT_DIR/tests-cuda.log" tests -m cuda
  [ "$GPU" = 1 ] || echo "(no CUDA device: the CUDA tests above were collected and skipped)"
  echo "tests done after $(elapsed)"
else
  echo "== tests"
  pytest_run "$OUT_DIR/tests.log" tests
  echo "tests done after $(elapsed)"
fi

if [ "$GPU" = 1 ]; then
  echo "== benchmarks"
  "$PY" benchmarks/run.py $([ "$QUICK" = 1 ] && echo --quick || echo --full) --out "$OUT_DIR/bench" \
    > "$OUT_DIR/bench.log" 2>&1 || status=1
  tail -40 "$OUT_DIR/bench.log"
else
  echo "== benchmarks: skipped (no CUDA device)"
fi
echo "all done after $(elapsed) (status $status)"
exit $status
