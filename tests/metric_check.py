"""Expected values of the metrics each notebook writes under its CI parameters.

``tests/expected_metrics/NN_name.json`` holds ``{"tolerance": {...}, "metrics": {...}}``. Numbers
must agree within ``abs`` + ``rel`` * |expected| (defaults below; a file may set its own, and
``per_metric`` overrides single names); everything else (counts given as integers, strings,
hashes, booleans) must be equal. Timings are never compared: a metric whose name matches
``VOLATILE`` is left out when the file is written. Why a tolerance at all: CPU kernels differ
between processors, so a rerun on another machine may move a 2-epoch accuracy by a few tenths of a
point; on the machine that wrote the file the values are identical.

Write or refresh a file from a finished run folder (and review the diff before committing)::

    python tests/metric_check.py <run folder> > tests/expected_metrics/NN_name.json
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

#: Metric names that measure time or the machine, not the result.
VOLATILE = re.compile(r"seconds|(^|_)ms(_per|$)|per_second|latency|(^|_)device$|scores_file|cost_ratio")
DEFAULT_TOLERANCE = {"abs": 0.01, "rel": 0.0}


def compare_metrics(expected: dict, actual: dict) -> list[str]:
    """One line per disagreement: ``name: expected X, got Y (tolerance ...)``."""
    tol = {**DEFAULT_TOLERANCE, **expected.get("tolerance", {})}
    per = expected.get("per_metric", {})
    problems = []
    for name, want in expected["metrics"].items():
        if name not in actual:
            problems.append(f"{name}: expected {want!r}, missing from metrics.json")
            continue
        got = actual[name]
        t = {**tol, **per.get(name, {})}
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            if math.isnan(want) and math.isnan(got):
                continue
            if not abs(got - want) <= t["abs"] + t["rel"] * abs(want):
                problems.append(f"{name}: expected {want!r}, got {got!r} (tolerance abs {t['abs']}, rel {t['rel']})")
        elif got != want:
            problems.append(f"{name}: expected {want!r}, got {got!r}")
    return problems


def expected_from_run(run_dir: str | Path) -> dict:
    """The expected-metrics document of a finished run (volatile metrics left out)."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"tolerance": DEFAULT_TOLERANCE,
            "metrics": {k: v for k, v in sorted(metrics.items()) if not VOLATILE.search(k)
                        and not isinstance(v, (dict, list))}}


if __name__ == "__main__":
    print(json.dumps(expected_from_run(sys.argv[1]), indent=1))
