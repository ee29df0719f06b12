# Two commands do everything on a fresh machine:
#   make demo   set up, fetch the default data if missing, then pretrain -> probe -> classify, with a summary
#               (geossl demo fetches into the data root; GEOSSL_DATA_MIRROR=URL fetches from a mirror)
#   make test   set up, then lint and run the full test suite (what CI runs)
SHELL := /bin/bash
VENV  ?= .venv
# Python 3.12 may only be reachable through pyenv: find it rather than assume python3 is 3.12.
PYTHON312 ?= $(shell for c in python3.12 "$$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null)" \
	$$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) python3; do \
	[ -n "$$c" ] && command -v "$$c" >/dev/null 2>&1 && "$$c" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null \
	&& { command -v "$$c"; break; }; done)

.PHONY: setup test check demo lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -n "$(PYTHON312)" ] || { echo "error: no Python >= 3.12 found (set PYTHON312=/path/to/python3.12)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,sagemaker]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check geossl sagemaker bench tests
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest -q tests

# The edit loop's fast lane: lint and the tests not marked slow (make test stays the whole gate).
check: setup
	$(VENV)/bin/ruff check geossl sagemaker bench tests
	$(VENV)/bin/pytest -q -x -m "not slow" tests

# geossl demo fetches what is missing itself (one place): eurosat-rgb and scenes, verified.
demo: setup
	$(VENV)/bin/geossl demo --config configs/demo.yaml --run-dir runs/demo

clean:
	rm -rf $(VENV) runs
