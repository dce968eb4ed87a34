# Two commands do all setup on a fresh clone:
#   make demo   build the offline repository once, serve it, classify sample photos
#   make test   the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BACKBONE ?= efficientnet_lite0
BUILD ?= build
# torch is pinned for reproducible builds; pip takes these from the local wheel cache where there is one.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup system-deps data build demo custom test test-fast test-integration report bench lint clean

setup: $(VENV)/.installed system-deps $(BIN)/promtool

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

# WordNet 3.0 (offline Wu-Palmer similarity in the evaluation report) comes from Debian.
system-deps:
	@if ! dpkg -s wordnet-base wordnet-sense-index >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index >/dev/null); \
	  else echo "note: install Debian's wordnet-base and wordnet-sense-index for the WordNet plots (sudo apt-get install wordnet-base)"; fi; \
	fi

# promtool checks and unit-tests the alert rules (docker/monitoring) offline; Debian's prometheus package
# ships it. Only the binary is extracted into the venv: nothing is installed or started.
$(BIN)/promtool: | $(VENV)/.installed
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; else \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download prometheus >/dev/null; }; } && \
	  dpkg -x prometheus_*.deb x && cp x/usr/bin/promtool $(CURDIR)/$@ && cd / && rm -rf $$tmp; fi

# Offline data sets from Debian packages (apt-get download + dpkg -x, no system install), prepared
# once into the data cache: $$FITGUARD_CACHE/data, else ~/.cache/fitguard/data.
data: setup
	$(BIN)/fitguard data prepare

# The offline build: quality head, detector, verified ONNX export, Triton repository.
build: setup data
	$(BIN)/fitguard build --backbone $(BACKBONE) --out $(BUILD)

demo: build
	$(BIN)/fitguard demo --build $(BUILD)

# A team's classifier, offline (README "Guard your own classifier", docs/custom.md): the example fine-tuned
# EfficientNet-Lite0 with 14 classes of its own, built, then judged on its held-out photos. Its scene
# features are the default build's (the head alone was fine-tuned).
CUSTOM ?= custom
custom: setup data
	$(BIN)/python scripts/custom_classifier.py --out $(CUSTOM)
	$(BIN)/fitguard build --classifier efficientnet_lite0 --weights $(CUSTOM)/model.pth \
	  --classes $(CUSTOM)/classes.txt --labelled $(CUSTOM)/photos/labels.txt --out build-$(CUSTOM)
	$(BIN)/fitguard evaluate-fit --classifier efficientnet_lite0 --weights $(CUSTOM)/model.pth \
	  --classes $(CUSTOM)/classes.txt --labelled $(CUSTOM)/photos/labels.txt \
	  --iqa-head build-$(CUSTOM)/iqa_head.pt --cache build-$(CUSTOM)/cache --report build-$(CUSTOM)/fit_report --no-gate

# Tiers: fast (no server, no build), integration (the embedded server on the tiny repository), build
# (the real build that make demo makes). make test runs them all: most tests on two workers (they spend
# much of their time waiting on servers; a file stays on one worker, so its fixtures are made once), then
# the reliability tests alone, since their timings are what they assert.
TEST_WORKERS ?= 2
test: build
	FITGUARD_BUILD=$(BUILD) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not reliability" --durations=25
	FITGUARD_BUILD=$(BUILD) $(BIN)/python -m pytest -m reliability --durations=10

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not server and not build and not reliability"

test-integration: setup data
	$(BIN)/python -m pytest -m "not build" --durations=25

# The figures the README and docs cite: the quality head's scene protocol (10 splits, BRISQUE, left-out
# kinds), the fit = right evaluation with its shifts and release gate, the paper's protocol.
report: build
	$(BIN)/fitguard train iqa --backbone $(BACKBONE) --quality-features shared \
	  --out $(BUILD)/report/iqa/iqa_head.pt
	$(BIN)/fitguard evaluate-fit --backbone $(BACKBONE) --iqa-head $(BUILD)/iqa_head.pt \
	  --report $(BUILD)/fit_report --cache $(BUILD)/cache
	$(BIN)/fitguard evaluate --backbone $(BACKBONE) --iqa-head $(BUILD)/iqa_head.pt \
	  --detector $(BUILD)/detector.joblib --report $(BUILD)/report --cache $(BUILD)/cache

bench: build
	$(BIN)/fitguard bench --model-repository $(BUILD)/model_repository --json $(BUILD)/bench.json \
	  --plot $(BUILD)/bench.png

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(BUILD)
