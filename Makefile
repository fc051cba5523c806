# medgen: set up, run the main job, run the tests.
# torch is installed first, on its own: TORCH picks the build (a CUDA machine gets the CUDA wheel from PyPI).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
MEDGEN_DATA_DIR ?= ../shared/data
DEMO ?= runs/demo
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[all]"
	touch $@

setup: $(VENV)/.installed

# Debian programs the DICOM/PACS/browser tests start: Orthanc, dcmtk, dicom3tools, chromium.
system-deps:
	@command -v Orthanc >/dev/null && command -v dciodvfy >/dev/null && command -v dcmdump >/dev/null \
	  && command -v chromium >/dev/null || ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq orthanc orthanc-dicomweb dcmtk dicom3tools chromium >/dev/null )

# The main job: train briefly on real chest X-rays, sample per class, evaluate, write images and report.html.
demo: setup
	MEDGEN_DATA_DIR=$(MEDGEN_DATA_DIR) $(BIN)/python -m medgen.demo --out $(DEMO)

# the suite in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its fixtures run once):
# one process leaves a core idle while tests wait on subprocesses and services (2 cores: 18 min instead of 27).
# Each worker, and every process its tests start, computes on one thread (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: setup system-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check medgen tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
