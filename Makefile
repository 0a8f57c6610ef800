# `make demo` and `make test` create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-other-cpu bench constraints clean mlflow-ui

# Every version pip installs comes from constraints.txt, the versions the tests' quality margins were measured
# with: without it a fresh install takes whatever numpy, pillow, scipy or timm is newest that day.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: pip takes the verified wheel instead of resolving another build
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unlearn demo

# Two pytest workers, each test file on one (its module fixtures stay shared): much of a Ray test is waiting,
# and the suite went from 16.7 to 13.9 minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# The quality tests once more on another CPU's arithmetic (tests/cpu_profile.py says which and why).
test-other-cpu: $(STAMP)
	$(PY) -m tests.cpu_profile other -- $(PY) -m pytest -n 2 --dist loadfile -m quality

# Refresh constraints.txt: resolve pyproject.toml afresh in a throwaway venv and pin what it got. Then re-run the
# quality tests on two CPU profiles (make test test-other-cpu) before committing the new pins.
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --upgrade pip
	.venv-constraints/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv-constraints/bin/pip install -q -e '.[test]'
	.venv-constraints/bin/pip freeze --exclude-editable > constraints.txt
	rm -rf .venv-constraints

# MLflow's web UI for the runs --mlflow logged: `make mlflow-ui STORE=runs/demo/mlflow.db` (then http://127.0.0.1:5000; PORT=...).
# The [mlflow] extra installs mlflow-skinny, which has no UI (`mlflow ui` answers "landing page (index.html) not
# found"), and full mlflow 3.18 needs cryptography<51, which constraints.txt (51.0.1) rules out: so the UI gets a venv
# of its own, at the client's version, which reads the same store schema. docs/cli.md
MLFLOW_UI_VENV ?= .venv-mlflow-ui
STORE ?= runs/demo/mlflow.db
PORT ?= 5000
mlflow-ui:
	test -f $(STORE) || { echo "no MLflow store at $(STORE): give STORE=OUT/mlflow.db of a run made with --mlflow"; exit 2; }
	test -x $(MLFLOW_UI_VENV)/bin/mlflow || { $(PYTHON) -m venv $(MLFLOW_UI_VENV) && $(MLFLOW_UI_VENV)/bin/pip install -q \
		"mlflow==$$(sed -n 's/^mlflow-skinny==//p' constraints.txt)"; }
	$(MLFLOW_UI_VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(STORE)) --host 127.0.0.1 --port $(PORT)

bench: $(STAMP)
	$(VENV)/bin/unlearn bench --config configs/digits.yaml

clean:
	rm -rf runs .pytest_cache
