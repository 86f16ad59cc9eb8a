#!/usr/bin/env bash
# The wheel as a user gets it: installed in a fresh venv, run without the
# CUDA toolkit and without the source tree.
#
#   tools/test_wheel.sh [WHEEL]     (default: the newest dist/fastact-*.whl)
#
# 1. a fresh venv (from the base interpreter of $PYTHON, the build venv's
#    python, default .venv/bin/python) gets torch, then the wheel and pytest
#    with pip (the wheel pins torch to its release). torch comes from
#    TORCH_INSTALL: `link` (default) links the build venv's torch and its
#    dependencies into the venv's site-packages (symlinks, seconds; pip sees
#    them installed); `pip` installs torch==<the build venv's release> with
#    pip (about 5 GB with its CUDA libraries: 9 min on the 2-core
#    development machine, from pip's local index);
# 2. from a temporary folder, with CUDA_HOME, CUDA_PATH, PYTHONPATH and
#    LD_LIBRARY_PATH's CUDA folders unset, no CUDA folder on PATH and an
#    `nvcc` first on PATH that fails the test if anything calls it:
#    `python -m fastact` (build_info and the self-check; SELFCHECK_ARGS,
#    e.g. --quick) and tests/smoke.txt's test files, copied there, against
#    the installed package.
# KEEP=1 keeps the temporary folder (its path is printed).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WHEEL="${1:-$(ls -t "$ROOT"/dist/fastact-*.whl 2>/dev/null | head -n 1)}"
if [ -z "$WHEEL" ] || [ ! -f "$WHEEL" ]; then
  echo "no wheel: make wheel (or give its path)" >&2
  exit 1
fi
WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
BASE_PYTHON="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
TORCH_RELEASE="$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fastact-wheel-test.XXXXXX")"
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

step "wheel $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)), torch $TORCH_RELEASE"
"$PYTHON" - "$WHEEL" "$ROOT/python" <<'PY'
import pathlib, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = [n for n in names if n.startswith("fastact/_C.") and n.endswith(".so")]
assert so, "the wheel has no fastact/_C extension"
assert "fastact/_C.build.json" in names, "the wheel has no build record (fastact/_C.build.json)"
assert not [n for n in names if n.startswith(("csrc/", "tests/"))], "sources in the wheel"
# every module of the source tree, subpackages included
src = pathlib.Path(sys.argv[2])
missing = sorted({p.relative_to(src).as_posix() for p in src.glob("fastact/**/*.py")} - set(names))
assert not missing, f"modules missing from the wheel: {missing}"
print(f"   {len(names)} files; extension {so[0]}")
PY

# nothing of the build environment: no CUDA toolkit, no source tree
unset CUDA_HOME CUDA_PATH CUDACXX PYTHONPATH TORCH_CUDA_ARCH_LIST FASTACT_CUDA_EMULATION \
  FASTACT_SKIP_TORCH_CHECK LD_PRELOAD VIRTUAL_ENV
strip_cuda() { printf '%s' "$1" | tr ':' '\n' | { grep -v -i cuda || true; } | paste -sd: -; }
PATH="$(strip_cuda "$PATH")"
LD_LIBRARY_PATH="$(strip_cuda "${LD_LIBRARY_PATH:-}")"
mkdir -p "$TMP/nonvcc" "$TMP/run/tests"
cat > "$TMP/nonvcc/nvcc" <<EOF
#!/bin/sh
echo "nvcc was called: \$*" >> "$TMP/nvcc-called"
exit 1
EOF
chmod +x "$TMP/nonvcc/nvcc"
export PATH="$TMP/nonvcc:$PATH" LD_LIBRARY_PATH

step "fresh venv ($BASE_PYTHON), torch ${TORCH_INSTALL:-link}"
"$BASE_PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
case "${TORCH_INSTALL:-link}" in
  link)
    # torch and the distributions it requires (recursively, extras left
    # out), as the build venv has them: each one's top-level files and its
    # .dist-info, symlinked
    "$PYTHON" - "$SITE" <<'PY'
import os, re, sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

site, todo, seen = sys.argv[1], [("torch", set())], set()
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(d.metadata["Name"]) for d in metadata.distributions(path=[site])}  # pip, setuptools
while todo:
    name, extras = todo.pop()
    name = norm(name)
    key = (name, tuple(sorted(extras)))
    if key in seen or name in have:
        continue  # pip install below brings what the venv's own copy lacks
    seen.add(key)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue  # a requirement of another platform or Python
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {""} | extras):
            todo.append((req.name, set(req.extras)))
    root = str(dist.locate_file(""))
    tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}
    for top in tops:
        src, dst = os.path.join(root, top), os.path.join(site, top)
        if os.path.exists(src) and not os.path.lexists(dst) and top != "__pycache__":
            os.symlink(src, dst)
names = sorted({n for n, _ in seen})
print(f"   linked {len(names)} distributions: {', '.join(names)}")
PY
    ;;
  pip) "$PY" -m pip install -q "torch==$TORCH_RELEASE" ;;
  *) echo "TORCH_INSTALL is link or pip" >&2; exit 1 ;;
esac
step "pip install the wheel, pytest and numpy"
"$PY" -m pip install -q "$WHEEL" pytest numpy
"$PY" -m pip check

cd "$TMP/run"
step "import fastact from $PWD"
"$PY" - "$TMP/venv" <<'PY'
import os, sys
import fastact
where = os.path.realpath(fastact.__file__)
assert where.startswith(os.path.realpath(sys.argv[1])), f"fastact imported from {where}, not the fresh venv"
print("   fastact", fastact.__version__, "from", os.path.dirname(where))
PY

step "python -m fastact ${SELFCHECK_ARGS:-}"
"$PY" -m fastact ${SELFCHECK_ARGS:-} > selfcheck.log 2>&1 || { cat selfcheck.log; exit 1; }
sed -n '/"version"/p;/torch_built_with"/p;/"torch_version"/p;/"cuda_compiled"/p;/"cuda_archs"/,/]/p' selfcheck.log
tail -n 1 selfcheck.log

step "smoke tests: $(grep -v '^#' "$ROOT/tests/smoke.txt" | tr '\n' ' ')"
for f in $(grep -v '^#' "$ROOT/tests/smoke.txt"); do cp "$ROOT/tests/$f" tests/; done
printf '[pytest]\naddopts = -ra\n' > pytest.ini
"$PY" -m pytest -q -p no:cacheprovider tests -k "not python_m_fastact"

if [ -e "$TMP/nvcc-called" ]; then
  echo "nvcc was called by the installed wheel:" >&2
  cat "$TMP/nvcc-called" >&2
  exit 1
fi
step "wheel test passed"
