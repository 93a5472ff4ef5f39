# Two commands from a fresh clone: `make demo` and `make test`. Each makes its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PYTEST_ARGS ?=
# pytest-randomly shuffles the tests (and reseeds random, NumPy and Faker) with this seed; each run draws
# one and prints it, and `make test SEED=N` replays that order exactly.
ifeq ($(origin SEED), undefined)
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
ORDER = -p randomly --randomly-seed=$(SEED)
SOURCES = runtime export train tests benchmarks setup.py
# The runtime's tests run a second time on the pure-NumPy merge (EDGETILE_PUREPYTHON=1), as a machine
# without a C compiler runs it. Left out: the merge suites, which run both paths by themselves, the
# training and export sides, the architecture test, which only reads sources, and the docs' commands.
PURE_TESTS = $(filter-out tests/test_merge% tests/test_train_% tests/test_export_% tests/test_architecture.py tests/test_docs.py,$(wildcard tests/test_*.py))

.PHONY: test test-fast docs-check check demo lint bench clean vendor

# Installs the runtime with every extra the tests need (ONNX Runtime, Ultralytics, torch, the oracles).
test: check $(VENV)/.installed-dev
	@echo "make test: test order seed $(SEED) (replay this order with: make test SEED=$(SEED))"
	$(VENV)/bin/python -m pytest $(ORDER) $(PYTEST_ARGS)
	EDGETILE_PUREPYTHON=1 $(VENV)/bin/python -m pytest $(ORDER) -m "not slow" $(PYTEST_ARGS) $(PURE_TESTS)

# The quick loop while working: the same checks, without the training, export and daemon tests.
test-fast: check $(VENV)/.installed-dev
	@echo "make test-fast: test order seed $(SEED) (replay this order with: make test-fast SEED=$(SEED))"
	$(VENV)/bin/python -m pytest $(ORDER) -m "not slow" $(PYTEST_ARGS)

# The README's and the guides' command examples, run as written against tiny inputs (tests/test_docs.py):
# every documented `edgetile ...` line is known there, parses, and runs here where a CPU can run it.
docs-check: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest -p no:randomly tests/test_docs.py $(PYTEST_ARGS)

# Lint, formatting, the architecture contracts (.importlinter) and the runtime's types (mypy, settings
# in pyproject.toml): the checks pre-commit runs too.
check: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m mypy

# The MQTT tests (tests/test_geo_mqtt.py) start a real Mosquitto broker: installed from the system's
# packages when missing; if that fails, make stops here and says so.
MOSQUITTO ?= /usr/sbin/mosquitto
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test: $(MOSQUITTO)

$(MOSQUITTO):
	@echo "make test: the MQTT tests need the Mosquitto broker at $@; installing it with apt-get"
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y mosquitto
	@test -x $@ || { echo "make test: error: mosquitto is still missing at $@ (the MQTT tests look for it there)" >&2; exit 1; }

# The memory tests of hostile photos (tests/test_hardening.py) measure detect's own peak with GNU time.
GNU_TIME ?= /usr/bin/time
test: $(GNU_TIME)

$(GNU_TIME):
	@echo "make test: the memory tests need GNU time at $@; installing it with apt-get"
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y time
	@test -x $@ || { echo "make test: error: GNU time is still missing at $@ (the memory tests look for it there)" >&2; exit 1; }

# The review page's browser tests (tests/test_review_page.py) drive Debian's Chromium through its
# chromedriver with Selenium: installed from the system's packages when missing, as Mosquitto is.
CHROMEDRIVER ?= /usr/bin/chromedriver
test: $(CHROMEDRIVER)

$(CHROMEDRIVER):
	@echo "make test: the browser tests need Chromium and its driver at $@; installing them with apt-get"
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium chromium-driver
	@test -x $@ || { echo "make test: error: chromedriver is still missing at $@ (the browser tests look for it there)" >&2; exit 1; }

# Leaflet for the review page, pinned in web/package-lock.json: `make vendor` installs exactly that
# version with npm and copies its dist into the package. The copies are committed, so neither an
# install nor `make test` needs Node.js; tests/test_review_static.py checks them against the pin.
vendor:
	cd web && npm ci --no-audit --no-fund
	$(PYTHON) web/vendor.py

# The C merge extension is built by the editable install: rebuild when its source changes.
$(VENV)/.installed-dev: setup.py pyproject.toml runtime/_merge.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $@

# The lean CPU runtime only (NumPy, OpenCV, ONNX Runtime and the C merge): what a field machine gets.
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/edgetile demo --out demo_out

$(DEMO_VENV)/.installed: setup.py pyproject.toml runtime/_merge.c
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -e ".[onnx]"
	touch $@

lint: check

clean:
	rm -rf $(VENV) $(DEMO_VENV) build *.egg-info runtime/*.so demo_out
