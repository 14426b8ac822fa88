# The two quick-start commands: `make demo` and `make test`. Each bootstraps .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean letters-png

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Generate every fixture case's letter and packet through a real Prefect flow run.
demo: $(STAMP)
	$(BIN)/python flows/letters.py fixtures/cases

## The test suite (the same command CI runs).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_letters.py

## PNG pictures of every page of every fixture letter, for reviewers: docs/letters/<case_id>-p<N>.png.
## Needs pdftoppm and pdfinfo (Debian: apt-get install poppler-utils).
letters-png: $(STAMP)
	@command -v pdftoppm >/dev/null && command -v pdfinfo >/dev/null || \
	  { echo "letters-png needs pdftoppm and pdfinfo: apt-get install poppler-utils" >&2; exit 1; }
	@set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(BIN)/priorauth letter fixtures/cases/* --out "$$out"; \
	mkdir -p docs/letters; rm -f docs/letters/*.png; \
	for pdf in "$$out"/*/letter.pdf; do \
	  id=$$(basename "$$(dirname "$$pdf")"); \
	  pages=$$(pdfinfo "$$pdf" | awk '/^Pages:/ {print $$2}'); \
	  for n in $$(seq 1 "$$pages"); do \
	    pdftoppm -r 60 -png -f "$$n" -l "$$n" -singlefile "$$pdf" "docs/letters/$$id-p$$n"; \
	  done; \
	done; \
	echo "wrote $$(ls docs/letters/*.png | wc -l) pages to docs/letters/"

clean:
	rm -rf $(VENV) var out .pytest_cache
