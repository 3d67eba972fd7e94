# det_ext: every target first creates or refreshes the virtualenv at .venv (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
OUTPUT ?= output/demo

.PHONY: venv demo test test-slow bench-eval clean-venv

venv:
	@bash dev/setup_venv.sh

# The main job on the embedded default: LT-Shapes + tiny Mask R-CNN, trained and evaluated on CPU.
demo: venv
	$(PY) tools/demo.py --output-dir $(OUTPUT)

# The default test suite (slow tests and benchmarks are excluded by the `slow` marker).
test: venv
	$(PY) -m pytest -q

# Slow tests only.
test-slow: venv
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
