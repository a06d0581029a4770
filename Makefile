# make demo: set everything up, train the reference CNN on the bundled digits, print its report.
# make test: set everything up, run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, pinned to the local 2.13.0 CPU build, so that nothing later can pull a CUDA one.
# speech (the spoken-numbers corpus): eSpeak NG from Debian when missing and we are root (else its tests skip).
$(STAMP): pyproject.toml
	command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && (apt-get install -y --no-install-recommends espeak-ng || (apt-get update && apt-get install -y --no-install-recommends espeak-ng)); } || echo "note: espeak-ng is missing (apt-get install espeak-ng); the speech tests will skip"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dlforge train cnn --data digits

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.cnn_vs_reference
	$(PY) -m benchmarks.scratch_vs_torch

clean:
	rm -rf $(VENV) runs
