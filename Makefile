# Quick start: `make demo` and `make test` on a fresh machine. Both bootstrap
# .venv idempotently (re-installing only when pyproject.toml changes).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: demo test data browser bench lint clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt exists; elsewhere the data
# module downloads it on first use.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
	  echo "note: could not install dataset-fashion-mnist; robustlab will download Fashion-MNIST or fall back to digits"; \
	fi

# Headless Chromium renders report.html in the report test (skipped where absent).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1) || \
	  echo "note: could not install chromium; the report rendering test will be skipped"; \
	fi

# The main job on the built-in default: the quickstart study (Fashion-MNIST,
# vanilla vs PGD-AT vs SAT vs AdvProp) -> runs/quickstart/report.html.
# Running it again reuses what is already trained.
demo: $(STAMP) data
	$(PY) -m robustlab study configs/quickstart.yaml

test: $(STAMP) data browser
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/attack_throughput.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_throughput.py

lint: $(STAMP)
	$(PY) -m ruff check robustlab tests benchmarks

clean:
	rm -rf runs .pytest_cache
