"""Compile GPU kernels for an H100 (sm_90) on a machine with no GPU, and read what came out.

The Triton interpreter (TRITON_INTERPRET=1) checks numerics, not compilation: a kernel can pass
every interpreter parity test and still be rejected by the compiler. This module drives
Triton's real JIT path for an sm_90 target and nvcc for the CUDA sources, then reads registers,
spills, stack, shared memory and the instruction mix (tensor-core or not) of every kernel.

Triton: a stand-in driver reports an sm_90 device (the real CUDA driver needs a GPU), and
`kernel[grid](...)` becomes `kernel.warmup(...)`, which specialises and compiles exactly as a
launch would (same argument types, alignments, constexprs) but launches nothing. The package's
own host functions are then called with small CPU tensors, so the configurations compiled are
the ones the package launches. This needs a process where TRITON_INTERPRET is unset before
triton is imported (the test suite sets it): run this file as a script,

    python tests/sm90.py triton MODULE:FUNCTION [...]  ->  JSON list of kernel reports on stdout

where FUNCTION() makes the launches to check (see tests/sm90_cases.py).

CUDA: `nvcc -cubin -arch=sm_90 -Xptxas -v` per .cu file, parsed per kernel, and the SASS from
cuobjdump (Triton ships one; the CUDA toolkit here has none).
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real driver reports warp size 32 for every NVIDIA target; the compiler output is the same
# whatever this third field says (checked: identical kernel hashes with 32 and 128).
TARGET_ARGS = ("cuda", 90, 32)

TENSOR_CORE_PTX = re.compile(r"\b(wgmma\.mma_async|mma\.sync|wmma\.mma)")
TENSOR_CORE_SASS = re.compile(r"\b(HGMMA|HMMA|QGMMA|IMMA)\b")
GLOBAL_LOAD_SASS = re.compile(r"\b(LDGSTS|LDG|UTMALDG)((?:\.[A-Z0-9_]+)*)")


def _load_bytes(op: str, suffix: str) -> str:
    """"OPCODE.bytes per thread" of one global-load SASS opcode: LDGSTS (cp.async) or LDG; UTMALDG
    (a bulk tensor copy) as "UTMALDG"."""
    if op == "UTMALDG":
        return op
    parts = suffix.split(".")
    for width, nbytes in (("128", "16"), ("64", "8"), ("U16", "2"), ("S16", "2"), ("U8", "1"), ("S8", "1")):
        if width in parts:
            return f"{op}.{nbytes}"
    return f"{op}.4"


@dataclass
class KernelReport:
    name: str  # kernel (function) name
    config: dict = field(default_factory=dict)  # constexprs / options it was compiled with
    registers: int = -1
    spill_stores: int = 0  # bytes per thread (ptxas -v)
    spill_loads: int = 0
    stack: int = 0  # stack frame bytes per thread
    local: int = 0  # local memory bytes per thread (cuobjdump -res-usage)
    shared: int = 0  # bytes (static + Triton's dynamic)
    ptx_tensor_core: list = field(default_factory=list)  # distinct tensor-core PTX opcodes
    sass_tensor_core: list = field(default_factory=list)  # distinct tensor-core SASS opcodes
    sass_ffma: int = 0  # FFMA instructions in the SASS (the non-tensor-core path)
    # global loads in the SASS: static instruction counts by opcode and bytes per thread
    # ("LDGSTS.16": 16-byte cp.async, "LDGSTS.4": 4-byte cp.async, "LDG.16", "LDG.1", ...)
    global_loads: dict = field(default_factory=dict)
    error: str | None = None  # compile error (the kernel did not compile)
    # the launcher's argument handling failed (Triton builds it at the first launch on a GPU, so a kernel
    # can compile and still never run: triton 3.6 expands only top-level TensorDescriptor arguments)
    launcher_error: str | None = None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads or self.local)

    @property
    def tensor_cores(self) -> bool:
        return bool(self.sass_tensor_core)


def tool(name: str) -> str | None:
    """A CUDA binary tool: from CUDA_HOME, PATH, or the copy bundled with Triton."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for cand in (os.path.join(home, "bin", name), shutil.which(name)):
        if cand and os.path.exists(cand):
            return cand
    try:
        import triton  # noqa: F401 - only for the path of its bundled tools
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        return cand if os.path.exists(cand) else None
    except ImportError:
        return None


def _ptxas_report(text: str) -> dict[str, dict]:
    """ptxas -v output -> {function: {registers, spill_stores, spill_loads, stack, shared}}."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        if cur is None:
            continue
        if (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        if (m := re.search(r"Used (\d+) registers", line)):
            cur["registers"] = int(m.group(1))
        if (m := re.search(r"(\d+) bytes smem", line)):
            cur["shared"] = int(m.group(1))
    return out


def _sass_stats(cubin: str) -> dict[str, dict]:
    """Per-function tensor-core opcodes and FFMA count, and local memory, from a cubin."""
    objdump = tool("cuobjdump")
    if objdump is None:
        raise RuntimeError("cuobjdump not found (CUDA_HOME/bin, PATH, or Triton's bundled copy)")
    sass = subprocess.run([objdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([objdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    stats: dict[str, dict] = {}
    cur = None
    for line in sass.splitlines():
        if (m := re.search(r"Function : (\S+)", line)):
            cur = stats.setdefault(m.group(1), {"tc": set(), "ffma": 0, "local": 0, "loads": {}})
        elif cur is not None:
            cur["tc"].update(TENSOR_CORE_SASS.findall(line))
            cur["ffma"] += len(re.findall(r"\bFFMA\b", line))
            for op, suffix in GLOBAL_LOAD_SASS.findall(line):
                key = _load_bytes(op, suffix)
                cur["loads"][key] = cur["loads"].get(key, 0) + 1
    cur = None
    for line in res.splitlines():
        if (m := re.search(r"Function (\S+):", line)):
            cur = stats.setdefault(m.group(1), {"tc": set(), "ffma": 0, "local": 0, "loads": {}})
        elif cur is not None and (m := re.search(r"LOCAL:(\d+)", line)):
            cur["local"] = int(m.group(1))
    return stats


# ------------------------------------------------------------------------------ Triton

def _install_standin():
    """Make Triton compile for sm_90 without a GPU, and turn launches into compile-only warmups."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton  # noqa: F401  (after TRITON_INTERPRET is unset: the real JIT, not the interpreter)
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    target = GPUTarget(*TARGET_ARGS)

    class StandInDriver(CudaDriver):
        def __init__(self):  # only what compilation asks of a driver; nothing touches a GPU
            self.get_current_device = lambda: 0
            self.set_current_device = lambda i: None
            self.get_current_stream = lambda i=None: 0
            self.get_device_capability = lambda i=0: (target.arch // 10, target.arch % 10)

        def get_current_target(self):
            return target

        @staticmethod
        def is_active():
            return True

    driver.set_active(StandInDriver())
    compiled: list = []

    def getitem(self, grid):
        def launch(*args, **kwargs):
            # which integer arguments Triton sees as multiples of 16 (what its alignment analysis,
            # and so the width of each copy, rests on), by name
            div16 = sorted(name for name, v in zip(self.arg_names, args)
                           if isinstance(v, int) and not isinstance(v, bool) and v % 16 == 0
                           and name not in self.do_not_specialize)
            kwargs = {**kwargs, "div16": ",".join(div16)}
            try:
                kernel = self.warmup(*args, grid=grid, **{k: v for k, v in kwargs.items() if k != "div16"})
            except Exception as exc:  # noqa: BLE001 - recorded, and the caller goes on to the next case
                compiled.append((self.fn.__name__, kwargs, None, f"{type(exc).__name__}: {exc}"))
                raise _CompileFailed() from exc
            compiled.append((self.fn.__name__, kwargs, kernel, None))
            return kernel
        return launch

    JITFunction.__getitem__ = getitem
    return compiled


class _CompileFailed(Exception):
    pass


def _config(kwargs: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in kwargs.items()
            if not hasattr(v, "data_ptr")}


def _launcher_error(kernel) -> str | None:
    """Build the host-side launch code the CUDA driver builds at a kernel's first launch (CudaLauncher: the
    C source, generated in Python, and the TensorDescriptor argument expansion), without compiling or
    launching anything; the error it raises, if any."""
    from triton.backends.nvidia.driver import make_launcher, wrap_handle_tensordesc

    src = kernel.src
    arg_idx = lambda x: (src.fn.arg_names.index(x),) if isinstance(x, str) else x  # noqa: E731 - as Triton does
    constants = {arg_idx(i): v for i, v in src.constants.items()}
    signature = dict(src.signature)
    meta = getattr(kernel.metadata, "tensordesc_meta", None)
    try:
        make_launcher(constants, signature, meta)
        wrap_handle_tensordesc(lambda *a: None, signature, meta)
    except Exception as exc:  # noqa: BLE001 - recorded in the report
        return f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} in Triton's launcher"
    return None


def _triton_report(name: str, kwargs: dict, kernel, error: str | None, tmp: str) -> KernelReport:
    rep = KernelReport(name=name, config=_config(kwargs))
    if kernel is None:
        rep.error = error
        return rep
    md = kernel.metadata
    rep.launcher_error = _launcher_error(kernel)
    rep.shared = int(md.shared)
    rep.ptx_tensor_core = sorted(set(TENSOR_CORE_PTX.findall(kernel.asm["ptx"])))
    base = os.path.join(tmp, f"{name}_{md.hash[:16]}")
    with open(base + ".ptx", "w") as fh:
        fh.write(kernel.asm["ptx"])
    with open(base + ".cubin", "wb") as fh:
        fh.write(kernel.asm["cubin"])
    arch = f"sm_{md.target.arch}a" if md.target.arch >= 90 else f"sm_{md.target.arch}"
    v = subprocess.run([tool("ptxas"), f"-arch={arch}", "-v", base + ".ptx", "-o", base + ".v.cubin"],
                       capture_output=True, text=True)
    info = next(iter(_ptxas_report(v.stdout + v.stderr).values()), {})
    rep.registers = info.get("registers", -1)
    rep.spill_stores, rep.spill_loads, rep.stack = (info.get(k, 0) for k in ("spill_stores", "spill_loads", "stack"))
    s = next(iter(_sass_stats(base + ".cubin").values()), {"tc": set(), "ffma": 0, "local": 0, "loads": {}})
    rep.sass_tensor_core, rep.sass_ffma, rep.local = sorted(s["tc"]), s["ffma"], s["local"]
    rep.global_loads = dict(sorted(s["loads"].items()))
    return rep


def compile_triton_cases(specs: list[str]) -> list[KernelReport]:
    """Run each "module:function" with launches turned into sm_90 compiles; one report per
    distinct compiled kernel (or per failed compile)."""
    compiled = _install_standin()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    for spec in specs:
        mod, fn = spec.split(":")
        cases = getattr(importlib.import_module(mod), fn)
        for case in cases():
            try:
                case()
            except _CompileFailed:
                pass
    reports, seen = [], set()
    keep = os.environ.get("SM90_KEEP")  # a folder to keep each kernel's PTX and cubins in, for reading
    if keep:
        os.makedirs(keep, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = keep or tmp
        for name, kwargs, kernel, err in compiled:
            key = (name, kernel.metadata.hash if kernel is not None else json.dumps(_config(kwargs), sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            reports.append(_triton_report(name, kwargs, kernel, err, tmp))
    return reports


def run_triton_subprocess(specs: list[str], timeout: int = 1500) -> list[KernelReport]:
    """compile_triton_cases in a fresh process with TRITON_INTERPRET unset (what tests call)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "triton", *specs], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"sm90 compile driver failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    return [KernelReport(**r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


# ------------------------------------------------------------------------------ CUDA

# What setup.py passes nvcc for the extension (besides the -gencode list), so that the kernels
# checked here are the kernels built there.
NVCC_FLAGS = ("-std=c++17", "-O3", "--use_fast_math")


def demangle(names: list[str]) -> list[str]:
    """C++ names as c++filt prints them; unchanged where c++filt is missing."""
    filt = shutil.which("c++filt")
    if not filt or not names:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def compile_cuda(path: str, tmp: str, extra: tuple = ()) -> list[KernelReport]:
    """nvcc -cubin -arch=sm_90 -Xptxas -v on one .cu file: one report per kernel, named by its
    demangled signature (the mangled name in config["mangled"])."""
    nvcc = tool("nvcc")
    cubin = os.path.join(tmp, os.path.basename(path) + ".cubin")
    proc = subprocess.run([nvcc, "-cubin", "-arch=sm_90", *NVCC_FLAGS, "-Xptxas", "-v",
                           "-I", os.path.join(ROOT, "kernels"), *extra, path, "-o", cubin],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return [KernelReport(name=os.path.basename(path), error=proc.stderr[-4000:])]
    ptx = _ptxas_report(proc.stdout + proc.stderr)
    sass = _sass_stats(cubin)
    reports = []
    for name, readable in zip(sass, demangle(list(sass))):
        s, p = sass[name], ptx.get(name, {})
        reports.append(KernelReport(name=readable, config={"mangled": name}, registers=p.get("registers", -1),
                                    spill_stores=p.get("spill_stores", 0), spill_loads=p.get("spill_loads", 0),
                                    stack=p.get("stack", 0), shared=p.get("shared", 0), local=s["local"],
                                    sass_tensor_core=sorted(s["tc"]), sass_ffma=s["ffma"],
                                    global_loads=dict(sorted(s["loads"].items()))))
    return reports


def cuda_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))


def format_table(reports: list[KernelReport]) -> str:
    rows = ["kernel | config | regs | spill st/ld | stack | local | smem | tensor cores (SASS) | FFMA | "
            "global loads (bytes: count) | error"]
    for r in reports:
        cfg = ",".join(f"{k}={v}" for k, v in r.config.items() if k != "mangled")
        rows.append(f"{r.name} | {cfg} | {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.stack} | {r.local} | "
                    f"{r.shared} | {'/'.join(r.sass_tensor_core) or '-'} | {r.sass_ffma} | "
                    f"{' '.join(f'{k}:{v}' for k, v in r.global_loads.items()) or '-'} | "
                    f"{(r.error or '').splitlines()[0][:80] if r.error else ''}")
    return "\n".join(rows)


if __name__ == "__main__":
    what, *args = sys.argv[1:] or ["help"]
    if what == "triton":
        reps = compile_triton_cases(args)
    elif what == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            reps = [r for p in (args or cuda_sources()) for r in compile_cuda(p, tmp)]
    else:
        sys.exit(__doc__)
    if os.environ.get("SM90_TABLE"):
        print(format_table(reps), file=sys.stderr)
    print(json.dumps([asdict(r) for r in reps]))
