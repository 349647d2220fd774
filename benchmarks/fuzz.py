"""Fuzz the selector parser and the YAML/flag config with Hypothesis: 10,000 examples each.

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py [--examples N]

Uses the strategies and classifiers of tests/test_fuzz.py (which CI runs at 200 examples). An
example is a crash when anything other than the project's user errors comes out (see that
file). Unlike the tests, this does not stop at the first crash: it counts every outcome and
prints each distinct crash (exception type and message) with its first example.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hypothesis import strategies as st  # noqa: E402

from test_fuzz import classify_config, classify_selector, flag_values, mappings, selectors  # noqa: E402


def fuzz(name: str, strategy, classify, examples: int) -> int:
    counts: Counter = Counter()
    crashes: dict[str, object] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(args):
        try:
            counts[classify(*args)] += 1
        except Exception as err:  # a crash: keep the first example of each kind
            counts["crash"] += 1
            crashes.setdefault(f"{type(err).__name__}: {str(err)[:120]}", args)

    started = time.time()
    run()
    total = sum(counts.values())
    print(
        f"{name}: {total:,} examples in {time.time() - started:.1f} s; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    )
    for kind, args in crashes.items():
        print(f"  crash {kind}\n    first example: {args!r}")
    return counts["crash"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    n = parser.parse_args().examples
    crashes = fuzz("selector parser", st.tuples(selectors()), classify_selector, n)
    crashes += fuzz(
        "config (YAML + flags)",
        st.tuples(st.one_of(mappings(), st.text(max_size=40)), flag_values()),
        classify_config,
        n,
    )
    print(f"crashes: {crashes}")
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
