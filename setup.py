"""Builds lsdm_fast's C++ extension (always) and its CUDA extension (when torch has CUDA and
nvcc is found). Install with `pip install --no-build-isolation -e .` so the extension is built
against the torch that will run it."""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover
    sys.exit("lsdm_fast: install torch first (CPU: `pip install torch==2.13.0`), then "
             "`pip install --no-build-isolation -e .`")

HERE = os.path.dirname(os.path.abspath(__file__))


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


# The extension is built on the machine that runs it, so tune for its CPU by default
# (LSDM_CPU_ARCH=x86-64-v2, say, for a portable build).
cpu_arch = os.environ.get("LSDM_CPU_ARCH", "native")
cxx_flags = ["-O3", "-std=c++20", "-fopenmp"] + ([f"-march={cpu_arch}"] if cpu_arch else [])


def loaded_libstdcxx() -> list[str]:
    """Link flags naming the libstdc++ shared library this process (torch) has loaded, so the extension uses
    that one even where the compiler would copy libstdc++ in statically. The H200 image's CXX (/opt/gcc/bin/g++,
    a wrapper whose lib folder holds only libstdc++.a) did: a second copy of libstdc++ keeps its own locale facet
    ids, and formatting a number into a TORCH_CHECK message then read the wrong facet (a segfault there,
    truncated messages with -static-libstdc++ on the CPU VM). Named before the driver's own -lstdc++, it
    resolves every libstdc++ symbol, so no archive member is pulled in."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:  # not Linux
        return []
    return sorted(paths)[:1]


shared_libstdcxx = loaded_libstdcxx()
ext_modules = [
    CppExtension(
        "lsdm_fast._C",
        rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))),
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp", *shared_libstdcxx],
    )
]

cuda_sources = rel(glob.glob(os.path.join(HERE, "kernels", "*.cu")) + glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
want_cuda = os.environ.get("LSDM_BUILD_CUDA", "auto")
if want_cuda != "0" and torch.version.cuda and CUDA_HOME and cuda_sources:
    arch = os.environ.get("LSDM_CUDA_ARCH", "80;90")  # portable Ampere + Hopper
    gencode = []
    for a in arch.split(";"):
        gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
    gencode += [f"-gencode=arch=compute_{arch.split(';')[-1]},code=compute_{arch.split(';')[-1]}"]  # PTX for newer cards
    ext_modules.append(
        CUDAExtension(
            "lsdm_fast._C_cuda",
            cuda_sources,
            include_dirs=[os.path.join(HERE, "csrc"), os.path.join(HERE, "kernels")],
            extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math", *gencode]},
            extra_link_args=shared_libstdcxx,
        )
    )
elif want_cuda == "1":
    sys.exit("lsdm_fast: LSDM_BUILD_CUDA=1 but torch has no CUDA or CUDA_HOME/nvcc is missing")

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
