# The two commands of the README. Each creates .venv (if needed) and installs what it runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The glyph recipe on a short schedule (~2 min on 2 cores, first glyph build included).
quickstart: $(PY)
	$(PY) -m pip install -q -e ".[recipes]"
	$(PY) recipes/quickstart.py

test: $(PY)
	$(PY) -m pip install -q -e ".[all,test]"
	$(PY) -m pytest -q tests
