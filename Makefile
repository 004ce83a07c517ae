# Two commands a newcomer needs: `make book` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The virtualenv is rebuilt only when the dependency files change.
DEPS_HASH := $(shell cat pyproject.toml environment.yml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NOTEBOOKS := $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
CELL_TIMEOUT := 600

.PHONY: venv test unit notebooks strip-check build-book book lab bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP) strip-check unit notebooks build-book

strip-check: $(STAMP)
	$(BIN)/nbstripout --verify $(NOTEBOOKS)

unit: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(NOTEBOOKS)

build-book: $(STAMP)
	$(BIN)/jupyter-book build --all -W -n --keep-going .

book: $(STAMP)
	$(BIN)/jupyter-book build --all .
	@echo "The book is at $(CURDIR)/_build/html/index.html"

lab: $(STAMP)
	$(BIN)/jupyter lab book

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build
