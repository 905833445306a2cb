# The two commands of the README. Each creates .venv (if needed) and installs what it runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-lowest venv

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
	$(PY) -m pip install -q -e ".[all,test,docs]"
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
	# Lint and format (settings in pyproject.toml): a finding or an unformatted file fails.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# The docs site: a broken link, a page missing from the nav or an unresolved API reference fails.
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict   # into site/ (git-ignored); not --quiet, which hides the warnings --strict counts
	# Two workers (the CI machine's 2 cores), one test file per worker at a time, so that a file's
	# module fixtures (the backend runs, the servers) are built once: the suite in about half the time.
	$(PY) -m pytest -q -n 2 --dist loadscope tests

# The lowest supported versions (constraints/lowest.txt) in a fresh .venv-lowest, and a fast but
# real subset of the suite: losses + official parity fixtures, one fit with save/load, evaluation
# and faiss indexes, a keras-hub backbone, the export round trip (SavedModel and ONNX). The
# highest end is `make test`. Not part of `make test` (CI time); see docs/tested-versions.md.
LOWEST_VENV := .venv-lowest
LOWEST_PY := $(LOWEST_VENV)/bin/python
LOWEST_EXTRAS := tensorflow,export,hub,test
LOWEST_TESTS := \
	tests/test_losses_parity.py \
	tests/test_keras_compat.py \
	tests/test_losses_functional.py \
	"tests/test_losses_keras.py::test_fit_lowers_the_loss_and_save_load_round_trip[True]" \
	tests/test_losses_keras.py::test_config_round_trip \
	tests/test_losses_keras.py::test_dynamic_batch_size_under_tf_function \
	tests/test_losses_keras.py::test_gradients_match_finite_differences \
	tests/test_evaluation_metrics.py \
	tests/test_indexing.py \
	tests/test_models.py::test_distilled_deit_can_concatenate_class_and_distillation_tokens \
	tests/test_export.py::test_dense_round_trip \
	tests/test_export.py::test_onnx_input_named_as_the_keras_input_and_our_producer_version

test-lowest:
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_PY) -m pip install -q --upgrade pip
	$(LOWEST_PY) -m pip install -q -c constraints/lowest.txt -e ".[$(LOWEST_EXTRAS)]"
	$(LOWEST_PY) -m pip check
	$(LOWEST_PY) constraints/check_installed.py constraints/lowest.txt
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider $(LOWEST_TESTS)
