# make demo: set everything up, train the reference CNN on the bundled digits, print its report.
# make test: set everything up, run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system demo test bench clean

setup: system $(STAMP)

# Debian packages the tests use, installed when missing (and we are root with apt-get; else a note):
# chromium + chromium-driver — the playground's browser tests drive it through selenium (no download);
# espeak-ng — the spoken-numbers speech corpus is spoken by eSpeak NG.
SYSTEM_PKGS := chromium chromium-driver espeak-ng
system:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null)) && \
		echo "make: installed$$missing"; \
	else echo "make: the tests need$$missing: sudo apt-get install$$missing (their tests skip without them)"; fi

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
