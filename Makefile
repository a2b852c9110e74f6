# Two entry points (README): `make demo` runs the quick B2M memory sweep on a local Ray
# with MLflow in ./mlflow.db; `make test` runs the test suite. Both set up .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raybrain-installed

.PHONY: setup demo test bench clean chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 are pinned together (README, first section)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/raybrain sweep search_spaces/b2m_memory_quick.yaml

# the browser test (tests/test_ui_browser.py) drives Debian's chromium + chromium-driver
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/sweep_overhead.py
	$(BIN)/python bench/prepare_once.py

clean:
	rm -rf raybrain_results mlflow.db mlflow.db-wal mlflow.db-shm mlruns mlartifacts raybrain_data raybrain_report
