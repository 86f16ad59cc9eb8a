"""Build of the fastact extension (torch.utils.cpp_extension).

A CUDAExtension when a CUDA toolkit is found and torch was built with CUDA,
a CppExtension otherwise; FASTACT_CPU_ONLY=1 forces the CPU-only build.
With no TORCH_CUDA_ARCH_LIST set and no GPU visible, kernels are built for
sm_80 and sm_90 plus PTX (runs on Ampere, Hopper and later through the JIT).

Every build writes beside the extension module a record of the torch it was
built against (fastact/_C.build.json, or _C_emu.build.json): `import fastact`
reads it before loading the extension and refuses, with a clear message, to
load it under another torch release (python/fastact/_torch_check.py).

FASTACT_LOCAL_VERSION=1 (`make wheel`) labels the version with that torch
and CUDA (PEP 440 local label, e.g. 0.1.0+torch2.14.1.cu130) and pins the
wheel's torch requirement to that release.

Object files go to setuptools' build/temp.* for the default CUDA archs (the
development and CI build) and to build/temp.*-<archs> (or -cpu) for any
other, so a wheel for other archs does not recompile the development build.

FASTACT_CUDA_EMULATION=1 builds the emulation lane instead (test
infrastructure, `make test-emu`): the module fastact._C_emu, in which the
CUDA sources of csrc/cuda/ (kernels and host code) are compiled by the host
compiler against the SIMT emulator of csrc/emu/ and registered for CPU
tensors; FASTACT_EMU_ASAN=1 adds AddressSanitizer.

FASTACT_CXXFLAGS: extra host-compiler flags, put after the others (so they
win): e.g. "-g0" drops the debug info (a quarter of the CPU build's time; the
code is the same), as `make test-torch-matrix` does.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
DEFAULT_ARCHS = "8.0;9.0+PTX"


def torch_release() -> str:
    """torch's version without its local label: 2.14.1 of 2.14.1+cu130."""
    return torch.__version__.split("+")[0]


def local_label(with_cuda: bool) -> str:
    """The wheel's PEP 440 local version label: torch2.14.1.cu130, torch2.14.1.cpu."""
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    return re.sub(r"[^A-Za-z0-9.]", ".", f"torch{torch_release()}.{cuda}")


def build_record(module: str, with_cuda: bool) -> dict:
    """What fastact/_torch_check.py compares with the torch it runs under."""
    return {
        "module": module,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_compiled": with_cuda,
        "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "fastact_version": VERSION,
    }


def build_cuda() -> bool:
    if os.environ.get("FASTACT_CPU_ONLY", "0") not in ("", "0"):
        return False
    return CUDA_HOME is not None and torch.version.cuda is not None


def can_link_libmvec() -> bool:
    """glibc's vector math library, used by the CPU kernels when present."""
    if not sys.platform.startswith("linux"):
        return False
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        try:
            r = subprocess.run([cc, src, "-lmvec", "-o", os.path.join(tmp, "t")],
                               capture_output=True)
        except OSError:
            return False
        return r.returncode == 0


def is_gcc() -> bool:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "clang" not in out.lower() and ("gcc" in out.lower() or "g++" in out.lower()
                                           or "free software foundation" in out.lower())


def sources(with_cuda: bool):
    src = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    if with_cuda:
        src = [s for s in src if not s.endswith("no_cuda.cpp")]
        src += sorted(glob.glob("csrc/cuda/*.cu"))
    return src


EMU_SRC = os.path.join("build", "emu-src")


def emulation_sources() -> list:
    """One C++ file per CUDA source: includes it, and registers the
    __launch_bounds__ of its kernels (and of the kernels of the cuda/
    headers it includes) with the emulator, which checks every launch."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from cuda_sources import included_headers, launch_bounds

    os.makedirs(EMU_SRC, exist_ok=True)
    out = []
    for cu in sorted(glob.glob("csrc/cuda/*.cu")):
        bounds = []
        for src in [cu] + included_headers(cu):
            bounds += launch_bounds(src)
        stem = os.path.splitext(os.path.basename(cu))[0]
        lines = [f"// Generated by setup.py from {cu} for the emulation build.",
                 f'#include "cuda/{stem}.cu"', "namespace fastact {", "namespace {"]
        lines += [f'const ::fastact::emu::LaunchBounds emu_bounds_{i}("{name}", ({expr}));'
                  for i, (name, expr) in enumerate(bounds)]
        lines += ["}  // namespace", "}  // namespace fastact", ""]
        path = os.path.join(EMU_SRC, f"emu_{stem}.cpp")
        text = "\n".join(lines)
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
        out.append(path)
    return out


def emulation_extension():
    flags = ["-O1", "-g", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-Wno-unknown-pragmas",
             "-DFASTACT_CUDA_EMULATION", f'-DFASTACT_VERSION="{VERSION}"', "-DFASTACT_PYTHON_MODULE"]
    link = ["-fopenmp"]
    if os.environ.get("FASTACT_EMU_ASAN", "0") not in ("", "0"):
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address"]
    ext = CppExtension(
        name="fastact._C_emu",
        sources=["csrc/registration.cpp", "csrc/emu/simt.cpp"] + emulation_sources(),
        include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": flags},
        extra_link_args=link,
    )
    ext.fastact_record = build_record("_C_emu", False)
    return ext


def extension():
    if os.environ.get("FASTACT_CUDA_EMULATION", "0") not in ("", "0"):
        return emulation_extension()
    with_cuda = build_cuda()
    defines = [f'-DFASTACT_VERSION="{VERSION}"', "-DFASTACT_PYTHON_MODULE"]
    # No FP-exception flags or errno are read: lets the vectorizer if-convert
    # `c ? a * s : b` and call the SIMD math functions.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"] + defines
    if is_gcc():
        # lets GCC hoist a functor's branch on a parameter (gelu's form) out of
        # the larger fused loops, which then vectorize
        cxx.append("--param=max-unswitch-insns=1000")
    link = ["-fopenmp"]
    if can_link_libmvec():
        cxx.append("-DFASTACT_USE_LIBMVEC")
        link.append("-lmvec")
    cxx += shlex.split(os.environ.get("FASTACT_CXXFLAGS", ""))
    kwargs = dict(
        name="fastact._C",
        sources=sources(with_cuda),
        include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
        extra_link_args=link,
    )
    if not with_cuda:
        ext = CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
        ext.fastact_record = build_record("_C", False)
        ext.fastact_temp_suffix = "cpu"
        return ext
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    # every nvcc compile also writes ptxas's resource report (registers,
    # spills) beside its object, for tools/kernel_resources.py
    os.environ.setdefault("PYTORCH_NVCC", f"{sys.executable} {os.path.join(ROOT, 'tools', 'nvcc_ptxas.py')}")
    os.environ.setdefault("FASTACT_REAL_NVCC", os.path.join(CUDA_HOME, "bin", "nvcc"))
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    defines.append(f'-DFASTACT_CUDA_ARCHS="{archs}"')
    cxx.append(f'-DFASTACT_CUDA_ARCHS="{archs}"')
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-fno-math-errno,-fno-trapping-math"] + defines
    ext = CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    ext.fastact_record = build_record("_C", True)
    if archs != DEFAULT_ARCHS:
        ext.fastact_temp_suffix = re.sub(r"[^A-Za-z0-9]+", "_", archs.replace("+PTX", "ptx")).strip("_")
    return ext


class BuildExt(BuildExtension):
    """torch's BuildExtension (ninja), plus: objects of a non-default build
    in their own folder, and the torch record beside each built module."""

    def finalize_options(self):
        super().finalize_options()
        suffix = {getattr(e, "fastact_temp_suffix", "") for e in self.extensions} - {""}
        if suffix:
            self.build_temp = f"{self.build_temp}-{'-'.join(sorted(suffix))}"

    def run(self):
        # ninja knows a header changed by its mtime, and pip keeps a wheel's
        # mtimes: objects built against another torch could look up to date
        # and be linked with new ones. A torch change empties the folder.
        stamp = os.path.join(self.build_temp, "torch_version")
        if os.path.isdir(self.build_temp) and not self.dry_run:
            built_for = open(stamp).read().strip() if os.path.exists(stamp) else None
            if built_for != torch.__version__:
                print(f"fastact: {self.build_temp} holds objects built against torch {built_for or '(unknown)'}; "
                      f"rebuilding against {torch.__version__}")
                shutil.rmtree(self.build_temp)
        super().run()
        if self.dry_run:
            return
        with open(stamp, "w") as f:
            f.write(torch.__version__ + "\n")
        for ext in self.extensions:
            record = getattr(ext, "fastact_record", None)
            if record is None:
                continue
            leaf = ext.name.rsplit(".", 1)[-1]
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), f"{leaf}.build.json")
            with open(path, "w") as f:
                json.dump(record, f, indent=1)
                f.write("\n")


EXT = extension()
WITH_CUDA = EXT.fastact_record["cuda_compiled"]
LABELED = os.environ.get("FASTACT_LOCAL_VERSION", "0") not in ("", "0")

setup(
    name="fastact",
    # a labeled wheel runs only under the torch release it was built for:
    # pip then installs (or keeps) exactly that torch
    version=f"{VERSION}+{local_label(WITH_CUDA)}" if LABELED else VERSION,
    install_requires=[f"torch=={torch_release()}"] if LABELED else ["torch>=2.11"],
    package_dir={"": "python"},
    # fastact and every subpackage of it (ops, losses, distributed, transformers, ...)
    packages=find_packages("python", include=["fastact", "fastact.*"]),
    ext_modules=[EXT],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
