# Commands: `make demo`, `make test` (the whole suite) and `make test-fast` (the suite less the tests marked slow).
# Each creates .venv on first use (and when pyproject.toml or requirements.lock change); otherwise the environment
# step is a no-op.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast env lock clean-outputs

# The demo recipe: the tiny model on the demo's larger split (data=demo_large: 400 samples per task), every part
# trained, batches of 16 at a constant lr, evaluated on the eval split as it trains. It learns the colour answers
# from the pixels (docs/inference.md, "What the demo reaches"). `python launch.py` alone is the quick smoke run.
DEMO_ARGS := data=demo_large freeze=full trainer.max_steps=500 trainer.per_device_train_batch_size=16 \
	optimizer.scheduler=constant optimizer.lr=3e-3 trainer.eval_steps=100

demo: $(STAMP)
	$(PY) launch.py $(DEMO_ARGS)

# One pytest-xdist worker per core (at most 4), each test file on one worker (its module fixtures built once).
# -rs: the reason of every skip in the summary (tests/test_slurm_real.py skips where no SLURM can be started).
test: $(STAMP)
	$(PY) -m pytest -q -rs -n auto --maxprocesses=4 --dist loadfile

# The fast layer while editing: every test but those marked slow (end-to-end subprocess runs, DeepSpeed,
# 2-process and longer trainings). `make test` stays the whole suite, and the one CI runs.
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -n auto --maxprocesses=4 --dist loadfile -m "not slow"

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
