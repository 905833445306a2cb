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

# The page test of `keras-roadmap serve` drives Debian's chromium (playwright cannot download its
# own browser here); installed with apt only when missing (sudo -n when not root).
CHROMIUM ?= /usr/bin/chromium

test: $(PY)
	$(PY) -m pip install -q -e ".[all,test]"
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	    $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "apt-get unavailable: tests/test_serve_http.py skips its browser test"; fi; \
	fi
	# torch 2.14's wheel pulls triton (GPU kernels only), whose native module crashes when it is
	# loaded after TensorFlow in one process; nothing on the CPU needs it.
	$(PY) -m pip uninstall -q -y triton
	$(PY) tests/backend_venvs.py jax torch   # .venv-jax, .venv-torch: no TensorFlow (tests/test_backends.py)
	$(PY) -m pytest -q tests
