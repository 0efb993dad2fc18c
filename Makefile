# Everything a fresh machine needs: `make demo` runs facestream on the bundled demo data,
# `make test` runs the test suite. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/facestream analyze tests/data/fr_examples/two_people.jpg tests/data/dlib_faces/2008_001009.jpg

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/embedder.py
	$(BIN)/python bench/detector.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
