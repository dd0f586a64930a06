# Two commands: `make test` and `make reproduce`. Each creates .venv and installs what it needs,
# including the `lab` console script that the other recipes call (pyproject.toml [project.scripts]).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: test reproduce install assets report lab mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned, so that no later requirement pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

assets: $(STAMP)
	$(BIN)/lab weights fetch

test: assets
	$(BIN)/python -m pytest

# every notebook on its defaults, then reports/ (built even if a notebook failed; the exit code says so);
# a finished run of the same parameters and committed code is kept, and trained models are reused
reproduce: assets
	$(BIN)/lab reproduce --reuse; status=$$?; $(BIN)/lab report && exit $$status

report: $(STAMP)
	$(BIN)/lab report

lab: assets
	$(BIN)/lab jupyter

# mutation score of the modules where a silent bug changes a finding (tests/mutation_run.py; not in CI)
mutation: $(STAMP)
	$(BIN)/pip install -q -e '.[mutation]'
	MUTATION_CHILDREN=2 $(BIN)/python tests/mutation_run.py
