# mixrec: the two commands of the README.
#   make demo   - create/reuse .venv, install, run the whole pipeline end to end on embedded defaults
#   make test   - create/reuse .venv, install (with dev tools), run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=

# Where pip takes torch 2.13.0 from:
#   auto (default)  pip's own configuration when it names an index or wheel folder (pip.conf, PIP_INDEX_URL,
#                   PIP_FIND_LINKS, ...), else the CPU wheels (PyPI's Linux torch is the multi-GB CUDA build)
#   pip             pip's configuration as it is, whatever it says
#   a URL           that wheel index, e.g. the CUDA 12.8 build:
#                   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Changing it after an install: rm $(VENV)/.installed (or make clean) and install again.
TORCH_INDEX ?= auto
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
pip_names_an_index = $(shell $(BIN)/python -m pip config list 2>/dev/null | grep -E 'index-url|find-links')
torch_index = $(if $(filter auto,$(TORCH_INDEX)),$(if $(pip_names_an_index),,$(TORCH_CPU_INDEX)),$(filter-out pip,$(TORCH_INDEX)))

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the chosen index; the constraints file pins everything else to tested versions.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0 $(if $(torch_index),--index-url $(torch_index))
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mixrec demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) mixrec-workspace
