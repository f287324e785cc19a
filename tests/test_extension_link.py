"""The compiled extensions share torch's libstdc++ (setup.py's loaded_libstdcxx).

An extension linked with its own static copy of libstdc++ (the H200 image's CXX did that) keeps a second set of
locale facet ids: formatting a number into an error message then segfaulted there, and came out truncated on the
CPU VM (reproduced with LDFLAGS=-static-libstdc++). Checked here on the ELF file itself, and by the message.
"""
import struct

import pytest
import torch

from lsdm_fast import _ext

DT_NEEDED, SHT_DYNAMIC = 1, 6


def needed_libraries(path: str) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object (what `readelf -d` lists as NEEDED)."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for _, sh_type, _, _, offset, size, link, _, _, _ in sections:
        if sh_type != SHT_DYNAMIC:
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NEEDED:
                end = data.index(b"\0", strtab + val)
                out.append(data[strtab + val:end].decode())
    return out


def _built(loader):
    ext = loader()
    if ext is None:
        pytest.skip("the extension is not built here")
    return ext.__file__


def test_needed_libraries_reads_torchs_own_library():
    # a library known to need libstdc++ (torch's C++ core), read by the parser above
    import os
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    needed = needed_libraries(lib)
    assert "libc10.so" in needed and any(n.startswith("libstdc++.so") for n in needed)


def test_cpu_extension_links_the_shared_libstdcxx():
    assert any(n.startswith("libstdc++.so") for n in needed_libraries(_built(_ext.cpu_extension)))


def test_cuda_extension_links_the_shared_libstdcxx():
    if not torch.cuda.is_available():
        pytest.skip("the CUDA extension is built only against a CUDA torch")
    assert any(n.startswith("libstdc++.so") for n in needed_libraries(_built(_ext.cuda_extension)))


def test_a_number_formatted_into_an_extension_error_comes_out_whole():
    ext = _ext.cpu_extension()
    if ext is None:
        pytest.skip("the extension is not built here")
    w, b = [torch.randn(4, 5), torch.randn(1, 4)], [torch.randn(4), torch.randn(1)]
    x, t = torch.randn(3, 2), torch.rand(3)
    # with a static libstdc++ copy this message stopped at "layer " (CPU VM) or crashed the process (H200)
    with pytest.raises(RuntimeError, match=r"takes 5 inputs"):
        ext.critic_gp_cpu(w, b, x, torch.randn(3, 2), torch.randn(3, 2), t, 10.0, "joint", 0.2)
