# Two commands from a fresh clone: `make demo` and `make test`. Each makes its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PYTEST_ARGS ?=

.PHONY: test demo lint bench clean

# Installs the runtime with every extra the tests need (ONNX Runtime, Ultralytics, torch, the oracles).
test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check runtime export train tests benchmarks
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-dev: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $@

# The lean CPU runtime only (NumPy, OpenCV, ONNX Runtime and the C merge): what a field machine gets.
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/edgetile demo --out demo_out

$(DEMO_VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -e ".[onnx]"
	touch $@

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check runtime export train tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_VENV) build *.egg-info runtime/*.so demo_out
