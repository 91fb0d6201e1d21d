# Two commands: `make demo` and `make test`. Both create .venv on first use (and when
# pyproject.toml or requirements.lock change); otherwise the environment step is a no-op.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env lock clean-outputs

demo: $(STAMP)
	$(PY) launch.py

test: $(STAMP)
	$(PY) -m pytest -q

env: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

# Re-pin the reproducible environment from the current .venv.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean-outputs:
	rm -rf outputs
