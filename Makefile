# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch; on a GPU machine use e.g. `make TORCH_SPEC=torch demo`
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench clean-venv system-deps

# Xvfb and the libraries Qt needs: installed when allowed (root, or sudo without a password),
# otherwise one line names the command; the tests then skip the GUI tests and run the rest.
system-deps:
	@bash scripts/system_deps.sh

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $(STAMP)

demo: system-deps $(STAMP)
	$(PY) -m napari_segneuron.demo

test: system-deps $(STAMP)
	$(PY) -m pytest -q -ra

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

clean-venv:
	rm -rf $(VENV)
