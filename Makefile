# Two entry points do all set-up on a fresh machine:
#   make demo   runs the main job (creates .venv on first use)
#   make test   runs the test suite (creates .venv on first use)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test doctor clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch first: an unpinned torch would pull the CUDA build (GBs).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,serving,batch,openvino]'
	# Triton Inference Server 2.51 (binary + Python backend) for `mattrt serve` and its tests. The
	# wheel pins numpy<2 for its own pytriton API, which mattrt does not use: install it alone.
	$(PY) -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mattrt demo --out demo-output --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

doctor: $(STAMP)
	$(VENV)/bin/mattrt doctor

clean:
	rm -rf $(VENV) demo-output .pytest_cache
