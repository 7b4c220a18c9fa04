# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both install from the committed lock (requirements/lock-linux-x86_64-py3.11.txt: every package
# pinned with its hashes); `make lock` regenerates it from pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/lock-linux-x86_64-py3.11.txt
# The lock's own CPU build of torch by default; on a GPU machine use e.g. `make TORCH_SPEC=torch demo`
# (everything else still comes from the lock; torch and its CUDA libraries are then resolved by pip).
TORCH_SPEC ?= locked
UV_VERSION := 0.13.9

.PHONY: demo test bench lock clean-venv system-deps

# Xvfb and the libraries Qt needs: installed when allowed (root, or sudo without a password),
# otherwise one line names the command; the tests then skip the GUI tests and run the rest.
system-deps:
	@bash scripts/system_deps.sh

$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	bash scripts/install_locked.sh $(PY) $(LOCK) "$(TORCH_SPEC)"
	touch $(STAMP)

demo: system-deps $(STAMP)
	$(PY) -m napari_segneuron.demo

test: system-deps $(STAMP)
	$(PY) -m pytest -q -ra

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# Re-resolve the lock from pyproject.toml (newest releases on the index that satisfy its ranges).
lock:
	python3 -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "uv==$(UV_VERSION)"
	.venv-lock/bin/uv pip compile pyproject.toml --extra all --extra testing --extra docs \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
	    --find-links /opt/wheels -c requirements/torch-cpu.txt \
	    --generate-hashes --no-header --quiet -o $(LOCK)
	@echo "wrote $(LOCK); run 'make clean-venv test' to test it"

clean-venv:
	rm -rf $(VENV)
