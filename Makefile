# Two commands: `make demo` and `make test`. Both create .venv when missing and install the project.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU wheel by default (it is what pip resolves for torch==2.13.0 on a CPU box with the local wheel);
# on a GPU node: make TORCH_INDEX=https://download.pytorch.org/whl/cu128 ...
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: demo test test-system lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The flagship job: simulate the smoke tomograms, train RobPicker (bi-level meta-learning) on 2 Ray Train
# workers, pick and score the held-out tomogram, track it all in MLflow.
demo: $(STAMP)
	$(PY) jobs/robpicker.py --smoke --config jobs/configs/robpicker-demo.yaml --output-dir outputs/demo --overwrite
	@echo "Results: outputs/demo (result.json, picks_*.star/csv, orthoslices_*.png, scores_test.csv, model.safetensors). Browse runs: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

test: $(STAMP)
	$(VENV)/bin/pytest -q

# The system tests: two Ray nodes with one killed, `ray job submit`, signals to a running job, the tracking server,
# a Tune sweep of Train runs.
test-system: $(STAMP)
	$(VENV)/bin/pytest -q -m system

# Format, lint (with the line-length rule) and type checks; CI runs them before the tests.
LINTED := platform tests benchmarks jobs datasets tuning
lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) outputs mlruns mlflow.db
