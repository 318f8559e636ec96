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
# Smoke runs train on one thread wherever they run: training is deterministic for a given thread count, so
# the outputs stored in notebooks/ (made this way by smoke-outputs) are what nbval gets on any machine.
SMOKE_ENV := REPROLIB_PROFILE=smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: book notebooks papermill test unit nbval book-check data env smoke-outputs bench clean

book: notebooks  ## execute every notebook (PROFILE, default budget; cached results are read) and build the book
	$(NB_ENV) .venv/bin/jupyter-book build .
	@echo "The book is in _build/html/index.html"

# Missing runs are computed by the sweep (EXECUTOR=ray: a local Ray cluster, one 1-thread run per core;
# EXECUTOR=inline: one after another in one process) before papermill renders the chapters from the cache.
EXECUTOR ?= ray
notebooks: env data  ## compute missing runs (reprolib.sweep), then papermill every chapter into book/generated/
	@if [ "$$REPROLIB_CACHED_ONLY" != 1 ]; then \
	  $(PY) -m reprolib.sweep all --profile $(PROFILE) --executor $(EXECUTOR) --cpus-per-run 1 || exit 1; fi
	@$(MAKE) --no-print-directory papermill PROFILE=$(PROFILE)

papermill:  # the chapters alone, no set-up (book-check runs them with every data source hidden)
	@mkdir -p book/generated
	@for nb in $(CHAPTERS); do \
	  echo "== papermill $$nb (profile $(PROFILE))"; \
	  $(NB_ENV) .venv/bin/papermill --no-progress-bar "$$nb" "book/generated/$$(basename $$nb)" -p profile $(PROFILE) || exit 1; \
	  $(PY) book/remove_parameter_cells.py "book/generated/$$(basename $$nb)" || exit 1; \
	done

test: env data unit nbval book-check  ## unit tests, notebooks under smoke through nbval, the book with warnings as errors

unit: env
	$(PY) -m pytest tests -q

# Notebooks re-executed under the smoke profile and compared with their stored (smoke) outputs;
# results go to a temporary folder so the smoke runs really execute. The folder is shared in pytest's sorted
# order, and summary.ipynb reads what the notebooks before it left there (it computes nothing): refresh its
# stored outputs with smoke-outputs, which runs every notebook in the same (sorted) order, never alone.
nbval: env data
	tmp=$$(mktemp -d) && $(SMOKE_ENV) REPROLIB_RESULTS=$$tmp/results $(NB_ENV) \
	  $(PY) -m pytest --nbval notebooks --nbval-current-env --nbval-sanitize-with .ci/nbval-sanitize.cfg -q -p no:cacheprovider

# The published book from committed budget results only: a result missing from data/results fails here
# instead of training for hours. Every data source is hidden (the loaders' variables point at an empty
# folder, which is then the only place they search), so this also proves that the book needs no data set.
book-check: env
	hidden=$$(mktemp -d) && export REPROLIB_CACHED_ONLY=1 REPROLIB_DATA=$$hidden \
	  REPROLIB_FASHION_MNIST=$$hidden REPROLIB_MNIST=$$hidden && \
	  $(MAKE) --no-print-directory papermill PROFILE=budget && \
	  $(NB_ENV) .venv/bin/jupyter-book build . -W --keep-going

smoke-outputs: env data  ## refresh the smoke outputs stored in notebooks/ (what nbval compares against)
	tmp=$$(mktemp -d) && for nb in $(NOTEBOOKS); do \
	  $(SMOKE_ENV) REPROLIB_RESULTS=$$tmp/results $(NB_ENV) \
	  .venv/bin/papermill --no-progress-bar "$$nb" "$$nb" || exit 1; done

# Speed targets live here, not in unit tests: each script prints ratios measured side by side in one run.
# glibc's allocator otherwise re-faults large activation buffers on every pass (timings swing 50%).
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
bench: env data  ## benchmarks: pruned-network speed (PyTorch, ONNX Runtime, training) vs FLOPs, HRank rank batching, ThiNet selection
	$(BENCH_ENV) $(PY) benchmarks/prune_speed.py
	$(BENCH_ENV) $(PY) benchmarks/prune_profile.py
	$(BENCH_ENV) $(PY) benchmarks/shrink_latency.py
	$(BENCH_ENV) $(PY) benchmarks/hrank_rank.py
	$(BENCH_ENV) $(PY) benchmarks/thinet_select.py
	$(BENCH_ENV) $(PY) benchmarks/train_throughput.py

# Fashion-MNIST (weight-pruning chapter) is needed only to compute LeNet runs that are not committed: the
# Debian package is installed where apt-get and root are there; elsewhere `make` says how and goes on.
FASHION_HINT := note: Fashion-MNIST not found. The weight-pruning chapter reads its committed results without it; \
  to compute a missing LeNet run, run 'sudo apt-get install dataset-fashion-mnist', or set REPROLIB_FASHION_MNIST \
  to a folder holding its four idx files.
HAVE_FASHION := $(PY) -c 'from reprolib import data; data.load("fashion-mnist", download=False)' 2>/dev/null
data: env  ## find, verify and decode CIFAR-10 (official download, $$REPROLIB_DATA, or ../shared/data archive); Fashion-MNIST
	$(PY) -m reprolib.data
	@if $(HAVE_FASHION); then echo "Fashion-MNIST ready"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== apt-get install dataset-fashion-mnist (Fashion-MNIST, weight-pruning chapter)"; \
	  apt-get install -y -q dataset-fashion-mnist && $(HAVE_FASHION) && echo "Fashion-MNIST ready" \
	    || echo "$(FASHION_HINT)"; \
	else echo "$(FASHION_HINT)"; fi

env: .venv/.synced
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

$(UV):
	python3 -m pip install --user --quiet uv

clean:
	rm -rf _build book/generated
