"""The torch check of `import fastact` (python/fastact/_torch_check.py): the
build records the torch it was built against, and the package refuses to
load the extension under another torch release with an ImportError that
names both versions and the fix, never an undefined-symbol error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastact
from fastact import _torch_check

PACKAGE = os.path.dirname(os.path.abspath(fastact.__file__))
MODULE = _torch_check.extension()  # _C, or _C_emu in the emulation lane


def test_build_info_reports_the_recorded_torch():
    info = fastact.build_info()
    assert info["torch_built_with"] is not None, f"no build record {MODULE}.build.json beside the extension"
    assert _torch_check.release(info["torch_built_with"]) == _torch_check.release(torch.__version__)
    assert _torch_check.release(info["torch_built_with"]) == info["torch_compiled_with"]
    assert info["torch_built_with_cuda"] == torch.version.cuda


@pytest.mark.parametrize("built,cuda_compiled,built_cuda,running,running_cuda,ok", [
    ("2.14.1+cu130", True, "13.0", "2.14.1+cu130", "13.0", True),
    ("2.14.1+cu130", True, "13.0", "2.14.1", "13.2", True),           # same CUDA major: same runtime soname
    ("2.14.1+cu130", True, "13.0", "2.14.1+cu126", "12.6", False),    # another CUDA runtime
    ("2.14.1+cu130", True, "13.0", "2.14.1+cpu", None, False),        # no libtorch_cuda to link
    ("2.14.1+cu130", False, "13.0", "2.14.1+cpu", None, True),        # a CPU-only build: any variant
    ("2.14.1+cpu", False, None, "2.14.1+cu126", "12.6", True),
    ("2.14.1+cu130", True, "13.0", "2.14.0+cu130", "13.0", False),    # another release
    ("2.14.1+cu130", False, "13.0", "2.11.0+cu130", "13.0", False),
    ("2.15.0.dev20260101+cu130", True, "13.0", "2.15.0.dev20260102+cu130", "13.0", False),  # nightlies
])
def test_mismatch_rules(built, cuda_compiled, built_cuda, running, running_cuda, ok):
    rec = {"torch_version": built, "torch_cuda": built_cuda, "cuda_compiled": cuda_compiled}
    why = _torch_check.mismatch(rec, running, running_cuda)
    assert (why is None) == ok, why
    if not ok:
        assert built in why and running in why


def fake_package(tmp_path, torch_version):
    """A copy of the installed package whose record says another torch; the
    extension itself is a symlink to the real one."""
    dst = tmp_path / "fastact"
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.build.json"))
    for name in os.listdir(PACKAGE):
        if name.endswith(".so"):
            os.symlink(os.path.join(PACKAGE, name), dst / name)
    rec = dict(_torch_check.record(MODULE) or {"module": MODULE, "cuda_compiled": False})
    rec["torch_version"] = torch_version
    (dst / f"{MODULE}.build.json").write_text(json.dumps(rec))
    return tmp_path


def import_in(path, python=sys.executable, **env):
    code = "import fastact; print('built with', fastact.build_info()['torch_built_with'])"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTACT_SKIP_TORCH_CHECK")}
    environ.update(PYTHONPATH=str(path), **env)
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=str(path), env=environ,
                          timeout=300)


def assert_clear_error(r, built, running):
    assert r.returncode != 0, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), r.stderr[-2000:]
    assert built in last and running in last, last
    assert "pip install --no-build-isolation ." in last or "make build-emu" in last, last
    assert "undefined symbol" not in r.stderr, r.stderr[-2000:]


def test_import_under_another_torch_is_a_clear_error(tmp_path):
    r = import_in(fake_package(tmp_path, "2.11.0+cu130"))
    assert_clear_error(r, "2.11.0+cu130", torch.__version__)
    assert "FASTACT_SKIP_TORCH_CHECK=1" in r.stderr


def test_skip_env_loads_anyway(tmp_path):
    # the fake record lies: the extension is the real one, so it loads
    r = import_in(fake_package(tmp_path, "2.11.0+cu130"), FASTACT_SKIP_TORCH_CHECK="1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "built with 2.11.0+cu130" in r.stdout


# A real mismatch: the python of a venv with another torch release (e.g.
# FASTACT_OTHER_TORCH_PYTHON=/tmp/v211/bin/python, torch 2.11.0) imports this
# build; without a record (FASTACT_SKIP_TORCH_CHECK=1) the loader's
# undefined symbol is still reported plainly.
OTHER = os.environ.get("FASTACT_OTHER_TORCH_PYTHON")


@pytest.mark.skipif(not OTHER, reason="FASTACT_OTHER_TORCH_PYTHON (a python with another torch) not set")
@pytest.mark.parametrize("skip", ["0", "1"])
def test_real_other_torch(skip):
    other = subprocess.run([OTHER, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert _torch_check.release(other) != _torch_check.release(torch.__version__)
    r = import_in(os.path.dirname(PACKAGE), python=OTHER, FASTACT_SKIP_TORCH_CHECK=skip)
    assert_clear_error(r, fastact.build_info()["torch_built_with"], other)
