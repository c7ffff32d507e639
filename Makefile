# Entry points for development and CI. `make demo` runs the whole stack on
# loopback with demo data; `make test` runs the linters and the test suite.

VENV := .venv
BIN := $(VENV)/bin
# The stamp is newer than pyproject.toml once the dependencies it lists are
# installed, so `make` reinstalls only after pyproject.toml changes.
STAMP := $(VENV)/.install-stamp
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/python -m scripts.demo

test: venv
	./scripts/services.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Runs each bench/*.py as a module (python -m bench.NAME) from the repository
# root, skipping private helpers whose names start with "_".
bench: venv
	./scripts/services.sh
	@set -e; found=0; \
	for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		name=$$(basename "$$script" .py); \
		case "$$name" in _*) continue ;; esac; \
		found=1; \
		echo "== python -m bench.$$name"; \
		$(BIN)/python -m "bench.$$name"; \
	done; \
	[ "$$found" = 1 ] || echo "no benchmarks in bench/"

# Removes caches and build output. The virtual environment and the demo's
# state in .demo/ stay: delete them by hand to start from scratch.
clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
