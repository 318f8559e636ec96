# A reproducible study of CNN pruning. Main job: `make book`; tests: `make test`.
SHELL := /bin/bash
PROFILE ?= $(or $(REPROLIB_PROFILE),budget)
UV := $(or $(shell command -v uv 2>/dev/null),$(HOME)/.local/bin/uv)
PY := .venv/bin/python
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
# tqdm bars would end up in the stored notebook outputs; scripts still show them.
NB_ENV := TQDM_DISABLE=1 PYTHONHASHSEED=0

.PHONY: book notebooks test unit nbval book-check data env smoke-outputs clean

book: notebooks  ## execute every notebook (PROFILE, default budget; cached results are read) and build the book
	$(NB_ENV) .venv/bin/jupyter-book build .
	@echo "The book is in _build/html/index.html"

notebooks: env data  ## papermill every notebook into book/generated/ under PROFILE
	@mkdir -p book/generated
	@for nb in $(NOTEBOOKS); do \
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
