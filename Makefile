# A reproducible study of CNN pruning. Main job: `make book`; tests: `make test`.
SHELL := /bin/bash
PROFILE ?= $(or $(REPROLIB_PROFILE),budget)
UV := $(or $(shell command -v uv 2>/dev/null),$(HOME)/.local/bin/uv)
PY := .venv/bin/python
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
# The book's chapters: the notebooks that _toc.yml lists (a notebook whose budget results are not
# committed yet stays out of the book, but nbval still runs it under the smoke profile).
CHAPTERS := $(patsubst %,notebooks/%.ipynb,$(shell sed -n 's|.*file: book/generated/||p' _toc.yml))
# tqdm bars would end up in the stored notebook outputs; scripts still show them.
NB_ENV := TQDM_DISABLE=1 PYTHONHASHSEED=0

.PHONY: book notebooks test unit nbval book-check data env smoke-outputs bench clean

book: notebooks  ## execute every notebook (PROFILE, default budget; cached results are read) and build the book
	$(NB_ENV) .venv/bin/jupyter-book build .
	@echo "The book is in _build/html/index.html"

notebooks: env data  ## papermill every chapter into book/generated/ under PROFILE
	@mkdir -p book/generated
	@for nb in $(CHAPTERS); do \
	  echo "== papermill $$nb (profile $(PROFILE))"; \
	  $(NB_ENV) .venv/bin/papermill --no-progress-bar "$$nb" "book/generated/$$(basename $$nb)" -p profile $(PROFILE) || exit 1; \
	done

test: env data unit nbval book-check  ## unit tests, notebooks under smoke through nbval, the book with warnings as errors

unit: env
	$(PY) -m pytest tests -q

# Notebooks re-executed under the smoke profile and compared with their stored (smoke) outputs;
# results go to a temporary folder so the smoke runs really execute.
nbval: env data
	tmp=$$(mktemp -d) && REPROLIB_PROFILE=smoke REPROLIB_RESULTS=$$tmp/results $(NB_ENV) \
	  $(PY) -m pytest --nbval notebooks --nbval-current-env --nbval-sanitize-with .ci/nbval-sanitize.cfg -q -p no:cacheprovider

# The published book from committed budget results only: a result missing from data/results fails here
# instead of training for hours.
book-check: env data
	REPROLIB_CACHED_ONLY=1 $(MAKE) notebooks PROFILE=budget
	REPROLIB_CACHED_ONLY=1 $(NB_ENV) .venv/bin/jupyter-book build . -W --keep-going

smoke-outputs: env data  ## refresh the smoke outputs stored in notebooks/ (what nbval compares against)
	tmp=$$(mktemp -d) && for nb in $(NOTEBOOKS); do \
	  REPROLIB_PROFILE=smoke REPROLIB_RESULTS=$$tmp/results $(NB_ENV) \
	  .venv/bin/papermill --no-progress-bar "$$nb" "$$nb" || exit 1; done

# Speed targets live here, not in unit tests: each script prints ratios measured side by side in one run.
# glibc's allocator otherwise re-faults large activation buffers on every pass (timings swing 50%).
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
bench: env data  ## benchmarks: shrunk-network latency vs FLOPs, HRank rank batching, ThiNet selection
	$(BENCH_ENV) $(PY) benchmarks/shrink_latency.py
	$(BENCH_ENV) $(PY) benchmarks/hrank_rank.py
	$(BENCH_ENV) $(PY) benchmarks/thinet_select.py

data: env  ## find, verify and decode CIFAR-10 (official download, $$REPROLIB_DATA, or ../shared/data archive)
	$(PY) -m reprolib.data

env: .venv/.synced
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

$(UV):
	python3 -m pip install --user --quiet uv

clean:
	rm -rf _build book/generated
