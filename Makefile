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
	$(PY) -m pip install -q -e ".[all,test,docs]"
	# torch 2.14's wheel pulls triton (GPU kernels only), whose native module crashes when it is
	# loaded after TensorFlow in one process; nothing on the CPU needs it.
	$(PY) -m pip uninstall -q -y triton
	$(PY) tests/backend_venvs.py jax torch   # .venv-jax, .venv-torch: no TensorFlow (tests/test_backends.py)
	# The docs site: a broken link, a page missing from the nav or an unresolved API reference fails.
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict   # into site/ (git-ignored); not --quiet, which hides the warnings --strict counts
	$(PY) -m pytest -q tests
