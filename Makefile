# The two commands of the README. Both create the environment first (scripts/bootstrap.sh: idempotent,
# CPU torch before anything else) and work again when run twice.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test test-fast clean-env

env:
	@bash scripts/bootstrap.sh

demo: env
	$(VENV)/bin/toolkit demo

# tests/ and the tutorial notebooks (nbval: each notebook must run top to bottom without error)
test: env
	$(PY) -m pytest -q -rs --nbval-lax tests notebooks

test-fast: env
	$(PY) -m pytest -q -rs -m "not slow" tests

notebooks: env
	$(PY) scripts/make_notebooks.py

clean-env:
	rm -rf $(VENV)
