# Quick start: `make run` (a 1-minute autofit run on the embedded digits) and `make test`.
# Each target creates the virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/autofit run --minutes 1

test: lint
	$(VENV)/bin/python -m pytest -q -m "not slow" --durations=25

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check autofit tests bench

bench: $(STAMP)
	$(VENV)/bin/python bench/cifar10.py --minutes 10 --max-params 2M

clean:
	rm -rf $(VENV) runs .pytest_cache
