# Two commands a newcomer needs: `make book` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The virtualenv is rebuilt only when the dependency files change.
DEPS_HASH := $(shell cat pyproject.toml environment.yml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NOTEBOOKS := $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
CELL_TIMEOUT := 600
# `make test` executes each notebook once: nbval runs it and tests/executed_notebooks.py keeps the
# executed copy here; build-book renders those outputs with execution off.
EXECUTED := _build/executed
# Notebooks run two at a time (pytest-xdist, one notebook per worker), each kernel with one torch
# thread: on the 2-core machine two single-threaded kernels finish sooner than one kernel with two
# threads, because much of a chapter is Python, plotting and small tensors that one thread runs as
# fast as two (benchmarks/NOTEBOOK_TIMES.md). NOTEBOOK_JOBS= NOTEBOOK_THREADS= runs them one by one.
# The workers take the notebooks longest first, by the last measured times.
NOTEBOOK_JOBS ?= -n 2 --dist loadfile --no-loadscope-reorder
NOTEBOOK_THREADS ?= 1
NOTEBOOK_TIMES := benchmarks/NOTEBOOK_TIMES.md

.PHONY: venv test unit notebooks strip-check build-book browser chromium book lab explorer bench leaderboard clean

venv: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP) strip-check unit notebooks build-book browser

strip-check: $(STAMP)
	$(BIN)/nbstripout --verify $(NOTEBOOKS)

# Two workers, one torch thread each, as for the notebooks.
unit: $(STAMP)
	MPLBACKEND=Agg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests --ignore=tests/browser

notebooks: $(STAMP)
	rm -rf $(EXECUTED)
	$(if $(NOTEBOOK_THREADS),OMP_NUM_THREADS=$(NOTEBOOK_THREADS) MKL_NUM_THREADS=$(NOTEBOOK_THREADS)) \
		$(BIN)/python -m pytest -p tests.executed_notebooks --executed-dir=$(EXECUTED) \
		--notebook-times=$(NOTEBOOK_TIMES) $(NOTEBOOK_JOBS) \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) \
		$$($(BIN)/python tests/executed_notebooks.py order $(NOTEBOOK_TIMES) $(NOTEBOOKS))

# The test build: the notebooks nbval just executed, not executed again (-W -n: warnings fail).
build-book: notebooks
	$(BIN)/python tests/executed_notebooks.py stage $(EXECUTED)
	$(BIN)/jupyter-book build --all -W -n --keep-going --path-output . $(EXECUTED)

# The browser tests: the book just built, and the explorer app, in headless Chromium; two workers,
# each with its own browser (the pages wait mostly on rendering, not on each other).
browser: build-book chromium
	$(BIN)/python -m pytest -n 2 tests/browser

# Debian's Chromium (Playwright's own browser downloads need the internet these machines lack).
chromium:
	@command -v chromium >/dev/null || { echo "Chromium is missing: installing Debian's chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

book: $(STAMP)
	$(BIN)/jupyter-book build --all .
	@echo "The book is at $(CURDIR)/_build/html/index.html"

lab: $(STAMP)
	$(BIN)/jupyter lab book

# The explorer as a Voila app on localhost.
EXPLORER_PORT ?= 8866
explorer: $(STAMP)
	@echo "The explorer: http://localhost:$(EXPLORER_PORT)/ (Ctrl-C stops it)"
	$(BIN)/voila book/explorer.ipynb --port=$(EXPLORER_PORT) --no-browser --Voila.ip=127.0.0.1

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The evaluation chapter's full leaderboard, written to benchmarks/leaderboard.md (the chapter shows it).
leaderboard: $(STAMP)
	$(BIN)/python benchmarks/leaderboard.py --out benchmarks/leaderboard.md

clean:
	rm -rf _build
