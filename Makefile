# The two Quickstart commands and the development chores. Everything runs from .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cir-installed

.PHONY: install test lint protos

# Re-runs the installer only when a dependency list changed.
$(STAMP): scripts/install-dev.sh deploy/constraints/cpu-dev.txt deploy/constraints/dev-tools.txt \
          services/*/pyproject.toml clients/python/pyproject.toml
	bash scripts/install-dev.sh

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	cd protos && npx --no-install buf lint
	bash scripts/gen-python-stubs.sh --check

protos: $(STAMP)
	bash scripts/gen-python-stubs.sh

.PHONY: demo
# The main job: start the suite (tiny random models unless CIR_PROFILE names a real profile), index the
# sample gallery, run composed queries, print the rankings and write out/demo/demo.html.
demo: $(STAMP)
	$(VENV)/bin/cir demo --out out/demo
