# The two commands of the README. Each creates .venv (if needed) and installs what it runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

quickstart: $(PY)
	$(PY) -m pip install -q -e ".[examples]"
	$(PY) recipes/quickstart.py

test: $(PY)
	$(PY) -m pip install -q -e ".[all,test]"
	$(PY) tests/backend_venvs.py jax torch   # .venv-jax, .venv-torch: no TensorFlow (tests/test_backends.py)
	$(PY) -m pytest -q tests
