# The two commands of the README. Both create the environment first (scripts/bootstrap.sh: idempotent,
# CPU torch before anything else) and work again when run twice.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test test-fast clean-env

env:
	@bash scripts/bootstrap.sh

demo: env
	$(VENV)/bin/toolkit demo

test: env
	$(PY) -m pytest -q -rs

test-fast: env
	$(PY) -m pytest -q -rs -m "not slow"

clean-env:
	rm -rf $(VENV)
