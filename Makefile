# make bench     build, self-check, benchmark on the device present, write the report
# make test      build and run the test suite
# make test-emu  the CUDA emulation lane: the CUDA kernels on a SIMT emulator
#                (CPU, AddressSanitizer), the suite's kernel tests against them
# make wheel     a binary wheel in dist/ (CUDA kernels for WHEEL_ARCHS)
# make test-wheel install that wheel in a fresh venv, without nvcc or the
#                source tree, and run the self-check and the smoke tests
# make sdist     the source distribution in dist/
# make test-torch-matrix  the suite's quick part (CPU-only build) on each
#                release of TORCH_MATRIX, each in its own .venv-torch-<v>
# Both bootstrap .venv on a fresh machine (torch $(TORCH_SPEC) from PyPI;
# e.g. make test TORCH_SPEC=torch==2.14.1 VENV=.venv-2.14 for another release).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pin: the newest torch release (make test, make bench, CI's CUDA build).
TORCH_SPEC ?= torch==2.15.0
# The releases besides the pin that the extension is built and tested with,
# CPU-only (README, build_info's tested_torch): the oldest supported, 2.11
# (the GPU machine's). `make test-torch-matrix TORCH_MATRIX="2.11.0 2.14.1"`
# adds the previous pin.
TORCH_MATRIX ?= 2.11.0
# Where pip gets torch (empty: PyPI). CI can save the CUDA wheels' download
# for the CPU-only matrix: TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_INDEX := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
# This Makefile pins torch itself (TORCH_SPEC, TORCH_MATRIX), so a machine-wide
# pip constraints file (pip config `constraint`; some machines cap torch below
# the release asked for) is lifted for its pip installs: an empty one. Set
# PIP_CONSTRAINT (environment or command line) to use a file of your own.
PIP_CONSTRAINT ?= /dev/null
export PIP_CONSTRAINT
export MAX_JOBS ?= 2
export CUDA_HOME ?= $(shell [ -d /usr/local/cuda ] && echo /usr/local/cuda)
FULL ?= 0

.PHONY: all bench test build selfcheck cpp-test build-emu test-emu kernels clean test-transformers-old \
	wheel test-wheel sdist test-torch-matrix

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel ninja

# the stamp is named after the torch spec, so an existing venv gets a new pin
DEPS := $(VENV)/.deps-$(subst =,,$(subst <,,$(subst >,,$(TORCH_SPEC))))
$(DEPS): $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_PIP_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q numpy pytest expecttest matplotlib tqdm
	touch $@

# fastact.transformers' tests: the `transformers` extra of pyproject.toml at
# the newest release it is tested with, and TRL for the SFTTrainer test (its
# own stamp, named after the spec, so an existing .venv gets a new pin too)
TRANSFORMERS_SPEC ?= transformers==5.24.0
TF_STAMP := $(VENV)/.deps-$(subst =,,$(subst <,,$(subst >,,$(TRANSFORMERS_SPEC))))
$(TF_STAMP): $(DEPS)
	$(BIN)/python -m pip install -q "$(TRANSFORMERS_SPEC)" "accelerate>=1.0" trl
	touch $@

# The transformers tests against older releases (CI: the oldest supported
# and the last 4.x), each installed into its own folder put first on
# PYTHONPATH; the venv's torch and accelerate serve all of them. (datasets<4
# there too: transformers 4.x imports datasets when it finds it, and the venv's
# datasets 5, TRL's, needs a huggingface_hub those releases do not take.)
TRANSFORMERS_OLD ?= 4.52.4 4.57.6
test-transformers-old: build
	@for v in $(TRANSFORMERS_OLD); do \
	  dir=$(VENV)/transformers-$$v; \
	  [ -f $$dir/.done ] || { $(BIN)/python -m pip install -q --target $$dir "transformers==$$v" "huggingface_hub<1.0" "datasets<4" \
	    && touch $$dir/.done; } || exit 1; \
	  echo "== transformers $$v"; \
	  PYTHONPATH=$(CURDIR)/$$dir $(BIN)/python -m pytest tests/test_transformers.py -q -p no:cacheprovider || exit 1; \
	done

# The torch matrix (CI): for each release of TORCH_MATRIX, a venv of its own
# (.venv-torch-<v>, reused), a CPU-only build of its own (build/torch-<v>: the
# objects in tmp/, the package with its _C in lib/, which the tests import;
# python/fastact's in-place build is left alone) and the quick part of the
# suite: MATRIX_TESTS (but the distributed vocab-parallel cases), the CPU
# float32 cases of the activations, the CPU cases of cross-entropy and
# dropout; no distributed, transformers, emulation or seed sweeps.
# MATRIX_CXXFLAGS=-g0: no debug info, a quarter less compile time, same code.
MATRIX_TESTS ?= tests/test_api.py tests/test_opinfo.py tests/test_nn.py tests/test_glu.py \
	tests/test_linear_ce.py tests/test_softmax.py
MATRIX_CXXFLAGS ?= -g0
matrix_pytest = PYTHONPATH=$(CURDIR)/$$out/lib $$venv/bin/python -m pytest -q -p no:cacheprovider $(1) -k "$(2)" \
	|| exit 1;
test-torch-matrix:
	@for v in $(TORCH_MATRIX); do \
	  venv=.venv-torch-$$v; out=build/torch-$$v; \
	  echo "== torch $$v: $$venv"; \
	  [ -x $$venv/bin/python ] || $(PYTHON) -m venv $$venv || exit 1; \
	  [ -f $$venv/.deps ] || { $$venv/bin/python -m pip install -q --upgrade pip setuptools wheel ninja \
	    && $$venv/bin/python -m pip install -q $(TORCH_PIP_INDEX) "torch==$$v" \
	    && $$venv/bin/python -m pip install -q numpy pytest expecttest && touch $$venv/.deps; } || exit 1; \
	  echo "== torch $$v: CPU-only build ($$out)"; \
	  rm -rf $$out/lib; \
	  FASTACT_CPU_ONLY=1 FASTACT_CXXFLAGS="$(MATRIX_CXXFLAGS)" $$venv/bin/python setup.py -q \
	    build_py -d $$out/lib build_ext -b $$out/lib -t $$out/tmp || exit 1; \
	  echo "== torch $$v: tests"; \
	  $(call matrix_pytest,$(MATRIX_TESTS),not vocab_parallel) \
	  $(call matrix_pytest,tests/test_activations.py,cpu and float32) \
	  $(call matrix_pytest,tests/test_cross_entropy.py tests/test_dropout.py,cpu) \
	done

# A development install: the venv imports python/fastact in place (a .pth
# file, as an editable install would), and builds recompile only what changed
# (ninja, build/). Users install with `pip install --no-build-isolation .`.
$(VENV)/.installed: $(DEPS) $(TF_STAMP)
	$(BIN)/python -c "import site, sys; open(site.getsitepackages()[0] + '/fastact-dev.pth', 'w').write(sys.argv[1] + '\\n')" "$(CURDIR)/python"
	touch $@

build: $(VENV)/.installed
	$(BIN)/python setup.py -q build_ext --inplace

selfcheck: build
	$(BIN)/python -m fastact

test: build
	$(BIN)/python -m pytest tests -q

bench: selfcheck
	$(BIN)/python benchmarks/run.py $(if $(filter 1,$(FULL)),--full,)

# A wheel of the CPU kernels and the CUDA kernels for WHEEL_ARCHS (A100,
# H100/H200, B200, RTX 50xx, and PTX for later GPUs), in dist/, its version
# labeled with the torch and CUDA it was built for (0.1.0+torch2.15.0.cu132);
# build parallelism: MAX_JOBS. With WHEEL_ARCHS equal to the development
# build's archs (8.0;9.0+PTX, CI's) it reuses that build's objects (build/);
# other archs compile in their own folder. build/lib.* is emptied first so
# that nothing stale from an earlier build is packed.
WHEEL_ARCHS ?= 8.0;9.0;10.0;12.0+PTX
wheel: | $(DEPS)
	rm -rf build/lib.*
	FASTACT_LOCAL_VERSION=1 TORCH_CUDA_ARCH_LIST="$(WHEEL_ARCHS)" \
	  $(BIN)/python -m pip wheel --no-build-isolation --no-deps -w dist .
	@ls -l dist/*.whl

# The newest wheel of dist/ installed in a fresh venv (torch of .venv's
# release), from a temporary folder, without nvcc, CUDA_HOME or the source
# tree: python -m fastact, then tests/smoke (tools/test_wheel.sh).
test-wheel:
	PYTHON=$(BIN)/python tools/test_wheel.sh $(WHEEL)

sdist: | $(DEPS)
	$(BIN)/python setup.py -q sdist -d dist
	@ls -l dist/*.tar.gz

# The emulation lane (csrc/emu/simt.h): fastact._C_emu holds the CUDA sources
# compiled by the host compiler, registered for CPU tensors; with
# FASTACT_CUDA_EMULATION=1 `import fastact` loads it instead of _C.
EMU_ASAN ?= 1
# Python is not linked with AddressSanitizer: preload it, and libstdc++ so
# that its exception interceptors find the real ones.
ASAN_PRELOAD := $(if $(filter 1,$(EMU_ASAN)),$(shell $(CXX) -print-file-name=libasan.so) \
	$(shell $(CXX) -print-file-name=libstdc++.so))
# AddressSanitizer's report goes to a file: pytest captures a test's stderr
# and loses it when the process aborts; test-emu prints it on failure.
EMU_ASAN_LOG := $(CURDIR)/build/emu/asan
EMU_ENV := FASTACT_CUDA_EMULATION=1 $(if $(ASAN_PRELOAD),LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:detect_odr_violation=0:log_path=$(EMU_ASAN_LOG))

build-emu: $(VENV)/.installed
	FASTACT_CUDA_EMULATION=1 FASTACT_EMU_ASAN=$(EMU_ASAN) $(BIN)/python setup.py -q build_ext --inplace -t build/emu

# The emulation lane runs the tests of the kernels, and leaves out (make test
# runs them on the real build): torch.compile's graphs (they call the same
# ops; the fake kernels are Python), the Hugging Face models and the
# self-check's seeds (their ops are the unit tests' ops, and a model under
# AddressSanitizer on the emulator costs minutes), and the tests of the
# package and of CPU-only internals. EMU_PYTEST_ARGS= runs everything.
EMU_PYTEST_ARGS ?= -k "not test_compile_fullgraph and not under_compile" \
	$(foreach t,transformers transformers_distributed selfcheck layout torch_check half_convert output_cache example,\
	  --ignore=tests/test_$(t).py)
test-emu: build-emu
	rm -f $(EMU_ASAN_LOG).*
	$(EMU_ENV) $(BIN)/python -m pytest tests -q -p no:cacheprovider $(EMU_PYTEST_ARGS) || \
	  { status=$$?; cat $(EMU_ASAN_LOG).* 2>/dev/null; exit $$status; }

# The CUDA kernels' registers, spills, shared memory and occupancy (from the
# ptxas reports of the CUDA build); fails on a spill not accepted in
# tools/accepted_spills.json.
kernels: build
	$(BIN)/python tools/kernel_resources.py --check
	$(BIN)/python -m fastact --kernels

# The C++ library for LibTorch users and its ctest, CPU-only.
# torch's CMake config looks for the CUDA toolkit torch was built with; where
# the toolkit lacks nvrtc, the copy in torch's nvidia wheels is used.
cpp-test: $(DEPS)
	rm -f cmake-build/CMakeCache.txt
	cmake -S . -B cmake-build -G Ninja -DFASTACT_CUDA=OFF \
	  -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  $(if $(CUDA_HOME),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME)) \
	  $$($(BIN)/python tests/cpp/cmake_hints.py)
	cmake --build cmake-build -j $(MAX_JOBS)
	cd cmake-build && ctest --output-on-failure

clean:
	rm -rf build cmake-build python/fastact/*.so python/fastact/*.build.json
