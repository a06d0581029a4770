# make demo: set everything up, train the reference CNN on the bundled digits, print its report.
# make test: set everything up, run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench clean

setup: $(STAMP) browser

# The browser tests of the playground drive Debian's chromium through its chromedriver (selenium, no download).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null)) && \
		echo "make: installed chromium and chromium-driver (the playground's browser tests)"; \
	else echo "make: the browser tests need chromium and chromedriver: sudo apt-get install chromium chromium-driver"; fi

# torch first, pinned to the local 2.13.0 CPU build, so that nothing later can pull a CUDA one.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dlforge train cnn --data digits

test: setup
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.cnn_vs_reference
	$(PY) -m benchmarks.scratch_vs_torch

clean:
	rm -rf $(VENV) runs
