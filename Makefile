# Two entry points on a fresh machine: `make demo` and `make test` (and `make docs`, the documentation site).
# Each creates .venv if missing and installs the package with every extra.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint install clean

$(STAMP): setup.py requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements-lock.txt -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m trainers.sine_demo --root_dir=runs/demo
	$(PY) -m export.saved_model --root_dir=runs/demo --output=runs/demo/saved_model
	$(PY) -m export.litert --saved_model=runs/demo/saved_model --output=runs/demo/model.tflite \
		--support_size=10 --query_size=100
	$(PY) -m export.try_sine --saved_model=runs/demo/saved_model --litert=runs/demo/model.tflite

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# The site from docs/ and mkdocs.yml into site/; any warning (a broken link, an API reference to a name that no
# longer exists) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs site
