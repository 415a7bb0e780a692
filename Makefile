# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test test-transformers-min docs fuzz fuzz-long bench bench-cold bench-rd bench-grid bench-lazy bench-any-size bench-ray clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel lies on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[torch,test,bench,ray]'
	touch $@

setup: $(VENV)/.installed

$(VENV)/.demo-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[torch,demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m nncodec_rd demo --output out/demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=ci
	$(MAKE) --no-print-directory test-transformers-min

# The oldest transformers that pyproject.toml declares (extras hf and test), tested too: it and
# the tokenizers and huggingface_hub it needs go into a folder of their own, without their
# dependencies, and shadow the venv's newer ones through PYTHONPATH; torch, numpy and the rest
# stay the venv's. The folder round trips (tests/torch/test_pretrained.py) run over it, and a
# test there checks the version (NNCODEC_RD_EXPECT_TRANSFORMERS). Change all three pins together.
TRANSFORMERS_MIN := 4.40.0
TRANSFORMERS_MIN_DIR := .venv-transformers-min

$(TRANSFORMERS_MIN_DIR)/.installed: $(VENV)/.installed Makefile
	rm -rf $(TRANSFORMERS_MIN_DIR)
	$(PIP) install -q --no-deps --target $(TRANSFORMERS_MIN_DIR) transformers==$(TRANSFORMERS_MIN) \
		tokenizers==0.19.1 huggingface_hub==0.36.2
	touch $@

test-transformers-min: $(TRANSFORMERS_MIN_DIR)/.installed
	PYTHONPATH=$(CURDIR)/$(TRANSFORMERS_MIN_DIR) NNCODEC_RD_EXPECT_TRANSFORMERS=$(TRANSFORMERS_MIN) \
		$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=ci tests/torch/test_pretrained.py

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[docs]'
	touch $@

# The Sphinx site (spec included from spec/, API from the docstrings), warnings as errors; first
# the check that every measured figure of the pages is that of bench/results/*.json
# (docs/figures.py; `$(PY) docs/figures.py --write` renders them).
docs: $(VENV)/.docs-installed
	$(PY) docs/figures.py
	$(PY) -m sphinx -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "open docs/_build/html/index.html"

$(VENV)/.fuzz-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[fuzz]'
	touch $@

# Fuzz the container parser and both decoders (docs/fuzzing.md): a short run, and the long one
# whose figures docs/fuzzing.md reports. Output, corpus and any crash under out/fuzz/ (the long
# one: out/fuzz-1m/).
FUZZ_MINUTES ?= 1
fuzz: $(VENV)/.fuzz-installed
	nice $(PY) -m nncodec_rd.conformance.fuzz --minutes $(FUZZ_MINUTES)

fuzz-long: $(VENV)/.installed
	nice $(PY) -m nncodec_rd.conformance.fuzz --minutes 40 --jobs 1 --engine builtin --out out/fuzz-1m

.venv-nncodec/bin/python:
	bash bench/setup_nncodec_env.sh

# The decode benchmark with every peer; NNCodec gets its own environment (about 2 minutes once).
bench: setup .venv-nncodec/bin/python
	mkdir -p bench/results
	$(PY) bench/decode_speed.py --json bench/results/decode_speed.json --plot bench/results/decode_speed.png

# The first decode after installing (docs/cold-start.md): a fresh decode-only venv under
# out/bench-cold/, an empty Numba cache, three files cold then warm (about 2 minutes).
out/demo/all-MiniLM-L6-v2.nrd:
	$(MAKE) demo

bench-cold: setup out/demo/all-MiniLM-L6-v2.nrd
	mkdir -p bench/results
	$(PY) bench/cold_start.py --json bench/results/cold_start.json

# Rate-fidelity against NNCodec on the four benchmark models, NNCodec in each model's run
# (docs/rate-fidelity.md): the digits CNN, EasyOCR's CRNN recogniser and CRAFT detector, and
# all-MiniLM-L6-v2; every method, and cerwu with one lever changed at a time
# (bench/rate_fidelity.py LEVERS); then where MiniLM's calibration-domain gap comes from
# (bench/domain_gap.py). Each JSON records its run's wall time. Then the page's figures are
# rendered from the JSONs.
bench-rd: $(VENV)/.demo-installed .venv-nncodec/bin/python
	mkdir -p bench/results
	$(PY) bench/digits_rate_fidelity.py
	$(PY) bench/crnn_rate_fidelity.py
	$(PY) bench/craft_rate_fidelity.py
	$(PY) bench/minilm_rate_fidelity.py
	$(PY) bench/domain_gap.py
	$(PY) docs/figures.py --write

# Per-layer grid choice (fixed vs rd) for rtn, optq and cerwu on both models (docs/grid-choice.md;
# about 25 minutes).
bench-grid: $(VENV)/.demo-installed
	mkdir -p bench/results
	$(PY) bench/digits_rate_fidelity.py --methods rtn,optq,cerwu --grid-choice both --qps '' --output bench/results/digits_grid_choice
	$(PY) bench/digits_grid_choice_seeds.py
	$(PY) bench/minilm_rate_fidelity.py --methods rtn,optq,cerwu --grid-choice both --lam-factors 2,4,8 --qps '' --output bench/results/minilm_grid_choice

# Inference-time decoding: latency and memory, eager vs lazy (docs/lazy-inference.md; about 6 minutes).
bench-lazy: $(VENV)/.demo-installed
	mkdir -p bench/results
	$(PY) bench/lazy_inference.py

# The block-sequential encoder on random-init Llama checkpoints of 60 M to 1.1 B parameters
# (docs/any-size.md; about 2 hours on 2 cores, about 10 GB of checkpoints under out/any_size).
bench-any-size: $(VENV)/.demo-installed
	mkdir -p bench/results
	$(PY) bench/any_size.py --json bench/results/any_size.json

# The same encode in this process and on local Ray clusters of 1, 2 and 4 workers (docs/ray.md).
bench-ray: $(VENV)/.demo-installed
	mkdir -p bench/results
	$(PY) bench/ray_encode.py --configs local,ray:1,ray:2,ray:4 --json bench/results/ray_encode.json

clean:
	rm -rf $(VENV) $(TRANSFORMERS_MIN_DIR) out .hypothesis .pytest_cache docs/_build
