# make bench   build, self-check, benchmark on the device present, write the report
# make test    build and run the test suite
# Both bootstrap .venv on a fresh machine (torch $(TORCH_SPEC) from PyPI).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1
export MAX_JOBS ?= 2
export CUDA_HOME ?= $(shell [ -d /usr/local/cuda ] && echo /usr/local/cuda)
FULL ?= 0

.PHONY: all bench test build selfcheck cpp-test clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel ninja

$(VENV)/.deps: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" numpy pytest expecttest matplotlib tqdm
	touch $@

# A development install: the venv imports python/fastact in place (a .pth
# file, as an editable install would), and builds recompile only what changed
# (ninja, build/). Users install with `pip install --no-build-isolation .`.
$(VENV)/.installed: $(VENV)/.deps
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

# The C++ library for LibTorch users and its ctest, CPU-only.
# torch's CMake config looks for the CUDA toolkit torch was built with; where
# the toolkit lacks nvrtc, the copy in torch's nvidia wheels is used.
cpp-test: $(VENV)/.deps
	rm -f cmake-build/CMakeCache.txt
	cmake -S . -B cmake-build -G Ninja -DFASTACT_CUDA=OFF \
	  -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  $(if $(CUDA_HOME),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME)) \
	  $$($(BIN)/python tests/cpp/cmake_hints.py)
	cmake --build cmake-build -j $(MAX_JOBS)
	cd cmake-build && ctest --output-on-failure

clean:
	rm -rf build cmake-build python/fastact/*.so
