# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel lies on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[torch,test,bench]'
	touch $@

setup: $(VENV)/.installed

$(VENV)/.demo-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[torch,demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m nncodec_rd demo --output out/demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=ci

.venv-nncodec/bin/python:
	bash bench/setup_nncodec_env.sh

# The decode benchmark with every peer; NNCodec gets its own environment (about 2 minutes once).
bench: setup .venv-nncodec/bin/python
	mkdir -p bench/results
	$(PY) bench/decode_speed.py --json bench/results/decode_speed.json --plot bench/results/decode_speed.png

clean:
	rm -rf $(VENV) out .hypothesis .pytest_cache
