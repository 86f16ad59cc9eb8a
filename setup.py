"""Build of the fastact extension (torch.utils.cpp_extension).

A CUDAExtension when a CUDA toolkit is found and torch was built with CUDA,
a CppExtension otherwise; FASTACT_CPU_ONLY=1 forces the CPU-only build.
With no TORCH_CUDA_ARCH_LIST set and no GPU visible, kernels are built for
sm_80 and sm_90 plus PTX (runs on Ampere, Hopper and later through the JIT).
"""
import glob
import os
import subprocess
import sys
import tempfile

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
DEFAULT_ARCHS = "8.0;9.0+PTX"


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


def extension():
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
    kwargs = dict(
        name="fastact._C",
        sources=sources(with_cuda),
        include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
        extra_link_args=link,
    )
    if not with_cuda:
        return CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    defines.append(f'-DFASTACT_CUDA_ARCHS="{archs}"')
    cxx.append(f'-DFASTACT_CUDA_ARCHS="{archs}"')
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-fno-math-errno,-fno-trapping-math"] + defines
    return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)


setup(
    name="fastact",
    version=VERSION,
    package_dir={"": "python"},
    packages=["fastact"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
