# make test: set up .venv on first use and run the suite.  make demo: the whole pipeline on examples/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo ablation ava bench lint man clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,photo,ray]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

lint: $(STAMP)
	$(VENV)/bin/ruff check uiaa_cli tests benchmarks examples

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

demo: $(STAMP)
	$(PY) examples/demo.py

# The paper's grid (label kinds x losses x seeds) on the example data; ARGS="--quick" for a tiny one.
ablation: $(STAMP)
	$(PY) examples/ablation.py --out ablation $(ARGS)

# The paper's AVA experiment (examples/ava.py): make ava AVA=DIR (AVA.txt, generic_test.jpgl, images/).
ava: $(STAMP)
	@test -n "$(AVA)" || { echo "make ava AVA=DIR: DIR holds AVA.txt, generic_test.jpgl and images/"; exit 2; }
	$(PY) examples/ava.py $(AVA) $(ARGS)

man: $(STAMP)
	$(PY) -m uiaa_cli.cli.manpages man

clean:
	rm -rf $(VENV) runs demo ablation .pytest_cache
