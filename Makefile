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

test: $(STAMP)
	$(PY) -m pytest tests -x -p no:cacheprovider

clean:
	rm -rf .venv outputs multirun
