# The two commands of the README: `make demo` (whole pipeline on generated data) and `make test`;
# `make app` starts the sketch-search app on the demo run (after `make demo`); `make reproduce ARGS="..."` the
# paper's table (every setting and seed, resumable; ARGS go to `python -m engine.reproduce`, see its --help).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
APP_STAMP := $(VENV)/.requirements-app-installed
TEST_STAMP := $(VENV)/.requirements-test-installed
APP_RUN  ?= checkpoint/demo
APP_DATA ?= datasets/Demo
APP_PORT ?= 7860

ARGS ?=

.PHONY: demo test test-deps clean-demo app app-deps app-run reproduce

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

$(APP_STAMP): requirements-app.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-app.txt
	@touch $(APP_STAMP)

app-deps: $(APP_STAMP)

$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	@touch $(TEST_STAMP)

# Test-only extras (OpenCV for the image-decoding cross-checks); without them those tests skip, saying why.
test-deps: $(TEST_STAMP)

app-run:
	@test -f $(APP_RUN)/model_best.pth.tar || { echo "no trained model in $(APP_RUN): run \`make demo\` first"; exit 2; }

# Serves 127.0.0.1 only; another run: make app APP_RUN=checkpoint/sketchy/zeroshot1 APP_DATA=datasets
app: app-run $(APP_STAMP)
	$(PY) search_app.py --resume_dir $(APP_RUN) --data_root $(APP_DATA) --port $(APP_PORT)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m engine.demo

reproduce: $(STAMP)
	$(PY) -m engine.reproduce $(ARGS)

clean-demo:
	rm -rf datasets/Demo checkpoint/demo checkpoint/demo_untrained
