# `make demo` and `make test` create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-other-cpu bench constraints clean

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

bench: $(STAMP)
	$(VENV)/bin/unlearn bench --config configs/digits.yaml

clean:
	rm -rf runs .pytest_cache
