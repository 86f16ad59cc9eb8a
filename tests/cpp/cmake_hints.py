"""Prints extra CMake -D flags for building against the pip torch wheel:
torch's CMake config needs nvrtc, which some CUDA toolkits lack but the
nvidia-* wheels that come with torch provide."""
import glob
import os
import sys

cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
if not glob.glob(os.path.join(cuda_home, "lib*", "libnvrtc.so*")):
    for base in sys.path:
        found = sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*")))
        if found:
            print(f"-DCUDA_nvrtc_LIBRARY={found[0]}")
            break
