"""docs/design.md and README.md name files and code that exist: a moved or deleted file, or a
`module.name` that no longer lives in that module, fails here (so the docs are fixed with the code)."""
import glob
import importlib
import inspect
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("docs/design.md", "README.md")
# where a path in the docs may be relative to (design §4-5 name ops/ files relative to lsdm_fast/)
BASES = ("", "lsdm_fast", "lsdm_fast/ops", "lsdm_fast/experiments", "tests", "scripts")
SOURCE = r"(?:py|cpp|cu|cuh|h|sh|toml)"
FOLDERS = r"(?:lsdm_fast|ops|experiments|tests|bench|scripts|results|docs|csrc|kernels|\.ci)"
# a path under a folder of the repository, or a source file's name
PATH = re.compile(rf"(?<![\w/.$-])({FOLDERS}/[\w./*-]*|[\w*-]+\.{SOURCE})(?![\w(</])")
DATA_SUFFIXES = {"json", "pt", "png", "npy", "npz", "md", "safetensors", "txt", "gz"}  # file names, not code
DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)`")
EXTENSIONS = {"_C", "_C_cuda"}  # compiled modules: built where a compiler (and CUDA) is present


def _text(doc):
    with open(os.path.join(ROOT, doc)) as fh:
        return fh.read()


def _exists(path: str) -> bool:
    for base in BASES:
        full = os.path.join(ROOT, base, path)
        if glob.glob(full) if "*" in full else os.path.exists(full):
            return True
    return False


def _named_paths(text: str) -> set[str]:
    out = set()
    for m in PATH.finditer(text):
        p = m.group(1).rstrip(".")
        if "://" in text[max(0, m.start() - 8):m.start() + 1] or p.startswith(("e.g", "i.e")):
            continue
        out.add(p)
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_the_docs_name_exists(doc):
    paths = _named_paths(_text(doc))
    assert len(paths) > 10, paths  # the pattern still finds the paths
    missing = sorted(p for p in paths if not any(part in p for part in ("OUT", "DIR", "NAME")) and not _exists(p))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def _resolve(dotted: str):
    """(object, module it was reached through) for `a.b.c` naming lsdm_fast code, or None for other names."""
    first, *rest = dotted.split(".")
    if first == "lsdm_fast":
        first, *rest = rest or [""]
    for prefix in ("lsdm_fast", "lsdm_fast.ops", "lsdm_fast.experiments"):
        try:
            obj = importlib.import_module(f"{prefix}.{first}")
            via = obj.__name__
            break
        except ImportError:
            continue
    else:
        pkg = importlib.import_module("lsdm_fast")
        if not hasattr(pkg, first):
            return None
        obj, via = getattr(pkg, first), "lsdm_fast"
    for name in rest:
        if inspect.ismodule(obj) and not hasattr(obj, name):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{name}")
                via = obj.__name__
                continue
            except ImportError:
                pass
        obj = getattr(obj, name)  # AttributeError: the name is gone
    return obj, via


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_name_the_docs_name_lives_there(doc):
    wrong, checked = [], 0
    for dotted in sorted(set(DOTTED.findall(_text(doc)))):
        last = dotted.split(".")[-1]
        if last in EXTENSIONS or last in DATA_SUFFIXES or re.fullmatch(rf"[\w.]+\.{SOURCE}", dotted):
            continue
        try:
            found = _resolve(dotted)
        except AttributeError as exc:
            wrong.append(f"{dotted} ({exc})")
            continue
        if found is None:
            continue  # not lsdm_fast code (torch.compile, ...)
        checked += 1
        obj, via = found
        home = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        if home is not None and home.startswith("lsdm_fast") and not home.startswith(via):
            wrong.append(f"{dotted} lives in {home}, not {via}")
    assert not wrong, f"{doc}: " + "; ".join(wrong)
    if doc == "docs/design.md":
        assert checked > 10
