# Two entry points: `make demo` runs the main job, `make test` runs the suite.
# Both install what is missing first (into the current Python environment).
PYTHON ?= python3
OUT ?= runs/demo

.PHONY: install demo test test-fast clean

install:
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) -m tokentilt tilt --toward x --lr 1e-4 --positions all --steps 40 --precision auto --out $(OUT) --overwrite

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
