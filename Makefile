PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m moeframe.run

# The suite runs on pytest-xdist workers (one per core, at most 4), a file's tests on
# one worker so that its module fixtures (servers, torchrun groups) start once; then
# the tests marked serial, whose assertions measure wall time, run alone.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := $(PY) -m pytest tests -p no:cacheprovider

test: $(STAMP)
	$(PYTEST) -n $(WORKERS) --dist loadfile --maxfail=1 -m "not serial"
	$(PYTEST) -x -m serial

clean:
	rm -rf .venv outputs multirun
